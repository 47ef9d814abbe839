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
    "check_trajectory",
    "TrajectoryCheck",
    "generate_trajectories",
    "diff_records",
    "filter_file",
    "span_cause",
    "load_engine",
    "EngineOptions",
    "score",
    "ScoreTask",
    "divergence_profile",
    "merge_table",
    "analyze_on_ray",
    "ray",
]

_LAZY = {
    "TmcliError": "tmcli.errors",
    "load_tokenizer": "tmcli.sources.tokenizers",
    "Reencoder": "tmcli.measure.reencode",
    "analyze_records": "tmcli.aggregate.analysis",
    "analyze_file": "tmcli.aggregate.analysis",
    "canonical_comparison": "tmcli.aggregate.groups",
    "read_records": "tmcli.io.records",
    "run_check": "tmcli.gates.check",
    "load_analysis": "tmcli.aggregate.stored",
    "write_parquet": "tmcli.aggregate.stored",
    "read_parquet": "tmcli.aggregate.stored",
    "write_report": "tmcli.present.html_report",
    "render_html": "tmcli.present.html_report",
    "print_analysis": "tmcli.present.terminal",
    "generate": "tmcli.generation.sweep",
    "read_prompts": "tmcli.generation.prompts",
    "load_model": "tmcli.sources.models",
    "parse_temperatures": "tmcli.cli.sweep_spec",
    "check_ids": "tmcli.measure.rollout_check",
    "check_ids_batch": "tmcli.measure.rollout_check",
    "IdsCheck": "tmcli.measure.rollout_check",
    "check_trajectory": "tmcli.measure.trajectory",
    "TrajectoryCheck": "tmcli.measure.trajectory",
    "generate_trajectories": "tmcli.generation.trajectories",
    "diff_records": "tmcli.gates.diff",
    "filter_file": "tmcli.gates.filter",
    "span_cause": "tmcli.measure.causes",
    "load_engine": "tmcli.generation.engines",
    "EngineOptions": "tmcli.generation.engines",
    "score": "tmcli.scoring.run",
    "ScoreTask": "tmcli.scoring.run",
    "divergence_profile": "tmcli.aggregate.divergence",
    "merge_table": "tmcli.aggregate.merge",
    "analyze_on_ray": "tmcli.aggregate.distributed",
}
# Modules exported under another name: `tmcli.ray.CheckIds` (importing it does not import Ray).
_MODULES = {"ray": "tmcli.measure.ray_udf"}


def __getattr__(name: str):
    import importlib

    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tmcli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
