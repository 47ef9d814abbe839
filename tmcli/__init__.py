"""tmcli — measure how often LLM outputs are non-canonically tokenized.

The public API mirrors the CLI: every command calls one of these functions.
Heavy dependencies (torch, transformers) are imported only inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "TmcliError",
    "load_tokenizer",
    "Reencoder",
    "analyze_records",
    "analyze_file",
    "canonical_comparison",
    "read_records",
    "run_check",
    "load_analysis",
    "write_parquet",
    "read_parquet",
    "write_report",
    "render_html",
    "print_analysis",
    "generate",
    "read_prompts",
    "load_model",
    "parse_temperatures",
    "check_ids",
    "check_ids_batch",
    "IdsCheck",
    "diff_records",
    "filter_file",
    "span_cause",
    "load_engine",
    "EngineOptions",
]

_LAZY = {
    "TmcliError": "tmcli.errors",
    "load_tokenizer": "tmcli.loading",
    "Reencoder": "tmcli.reencode",
    "analyze_records": "tmcli.analysis",
    "analyze_file": "tmcli.analysis",
    "canonical_comparison": "tmcli.summary",
    "read_records": "tmcli.records",
    "run_check": "tmcli.check",
    "load_analysis": "tmcli.store",
    "write_parquet": "tmcli.store",
    "read_parquet": "tmcli.store",
    "write_report": "tmcli.report",
    "render_html": "tmcli.report",
    "print_analysis": "tmcli.render",
    "generate": "tmcli.generation",
    "read_prompts": "tmcli.prompts",
    "load_model": "tmcli.loading",
    "parse_temperatures": "tmcli.generation",
    "check_ids": "tmcli.verify",
    "check_ids_batch": "tmcli.verify",
    "IdsCheck": "tmcli.verify",
    "diff_records": "tmcli.diff",
    "filter_file": "tmcli.filter",
    "span_cause": "tmcli.causes",
    "load_engine": "tmcli.engines",
    "EngineOptions": "tmcli.engines",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tmcli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
