"""What `tmcli generate` is asked to run, as one typed value between the parser and `generate()`.

The parser hands over strings (``--temperatures 0:2:0.2``, ``--top-p 1,0.95,0.9``);
`SweepSpec.from_cli` turns them into the sweep's axes and options, and `SweepSpec.run` calls the
public `tmcli.generate` with them, as lm-evaluation-harness's ``EvaluatorConfig.from_cli(args)``
stands between its parser and ``simple_evaluate``. Option parsing lives here, not in the library
(`parse_temperatures` is also `tmcli.parse_temperatures`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from tmcli.errors import TmcliError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TEMPERATURES = "0:2:0.2"


def _numbers(spec: str, what: str, example: str) -> list[Decimal]:
    """``"0,1,2"`` or ``"0:2:0.2"`` (start:stop:step, stop included), or a comma list of both."""
    values: list[Decimal] = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            if ":" in part:
                bits = [Decimal(b) for b in part.split(":")]
                if len(bits) != 3:
                    raise InvalidOperation
                start, stop, step = bits
                if step <= 0:
                    raise TmcliError(f"{what} step must be positive in '{part}'")
                x = start
                while x <= stop:
                    values.append(x)
                    x += step
            else:
                values.append(Decimal(part))
        except InvalidOperation:
            raise TmcliError(f"cannot read {what} '{spec}'",
                             hint=f"use a list like {example} or a range like start:stop:step") \
                from None
    if not values or any(not v.is_finite() for v in values):
        raise TmcliError(f"no usable {what} in '{spec}'", hint=f"e.g. {example}")
    return values


def parse_temperatures(spec: str) -> list[float]:
    """``"0,1,2"`` or ``"0:2:0.2"`` (start:stop:step, stop included), or a comma list of both."""
    values = [float(v) for v in _numbers(spec, "temperatures", "0,1,2")]
    for t in values:
        if t < 0:
            raise TmcliError(f"temperature {t:g} is not allowed", hint="temperatures must be >= 0")
    return list(dict.fromkeys(values))


def parse_top_k(spec: str) -> list[int]:
    """``--top-k 0,50``: whole numbers >= 0 (0 is off)."""
    values = _numbers(spec, "--top-k", "0,50")
    if any(v < 0 or v != v.to_integral_value() for v in values):
        raise TmcliError(f"--top-k takes whole numbers >= 0, got '{spec}'",
                         hint="e.g. --top-k 50 (0 turns it off)")
    return list(dict.fromkeys(int(v) for v in values))


def parse_share(spec: str, flag: str, example: str) -> list[float]:
    """``--top-p 1,0.95,0.9`` or ``--min-p 0.05``: numbers in [0, 1]."""
    values = [float(v) for v in _numbers(spec, flag, example)]
    if any(not 0 <= v <= 1 for v in values):
        raise TmcliError(f"{flag} takes numbers in [0, 1], got '{spec}'", hint=f"e.g. {flag} {example}")
    return list(dict.fromkeys(values))


@dataclass
class SweepSpec:
    """One `generate` run: what to sample (models, prompts, the sampling axes, lengths) and how
    (engine, hardware and scale-out options). Every field is typed and checked."""

    output: str
    prompts: str  # a prompt file, or - for stdin
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    prompt_field: str = "text"
    min_chars: int = 0
    n_prompts: int | None = None
    shuffle: bool = False
    # the sampling axes: every combination is a row; None: off (or the model's, with
    # sampling_config "model"; temperatures then default to the model's too)
    temperatures: list[float] | None = None
    top_k: list[int] | None = None
    top_p: list[float] | None = None
    min_p: list[float] | None = None
    sampling_config: str | None = None
    max_new_tokens: int = 1024
    stop_at_eos: bool = False
    seed: int = 0
    canonical: str = "off"
    retokenize_every: int = 1
    engine: str = "auto"
    turns: int | None = None  # multi-turn conversations (`generate_trajectories`)
    engine_options: dict = field(default_factory=dict)  # device, dtype, threads, batch_size, ...

    @classmethod
    def from_cli(cls, *, temperatures: str | None, top_k: str | None, top_p: str | None,
                 min_p: str | None, sampling_config: str | None, model: list[str] | None,
                 **options) -> SweepSpec:
        """The spec for the options as the parser gave them (axes as strings)."""
        if sampling_config not in (None, "model"):
            raise TmcliError(f"unknown --sampling-config '{sampling_config}'",
                             hint="use --sampling-config model (each model's generation config), "
                                  "or leave it out for pure sampling unless --top-k/-p/--min-p")
        if options.get("turns") is not None and options.get("canonical", "off") != "off":
            raise TmcliError("--canonical is not supported with --turns", hint="drop one of them")
        if temperatures is None and sampling_config is None:
            temperatures = DEFAULT_TEMPERATURES
        engine_keys = ("device", "dtype", "threads", "batch_size", "trust_remote_code",
                       "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization",
                       "max_model_len", "ray_address")
        return cls(
            models=list(model or [DEFAULT_MODEL]),
            temperatures=parse_temperatures(temperatures) if temperatures is not None else None,
            top_k=parse_top_k(top_k) if top_k is not None else None,
            top_p=parse_share(top_p, "--top-p", "1,0.95,0.9") if top_p is not None else None,
            min_p=parse_share(min_p, "--min-p", "0.05") if min_p is not None else None,
            sampling_config=sampling_config,
            engine_options={k: options.pop(k) for k in engine_keys if k in options},
            **options)

    def read_prompts(self):
        from tmcli.generation.prompts import read_prompts

        return read_prompts(self.prompts, field=self.prompt_field, min_chars=self.min_chars,
                            n_prompts=self.n_prompts, shuffle=self.shuffle, seed=self.seed)

    def run(self, progress=None):
        """`tmcli.generate` over this spec; its `GenerateSummary`."""
        from tmcli.generation.sweep import generate

        if self.turns is not None:  # trajectories: their own loop (tmcli.generation.trajectories)
            from tmcli.generation.trajectories import generate_trajectories

            opts = {k: v for k, v in self.engine_options.items()
                    if k in ("device", "dtype", "threads", "batch_size", "trust_remote_code")}
            return generate_trajectories(
                self.models, self.read_prompts(), self.output, turns=self.turns,
                temperatures=self.temperatures, top_k=self.top_k, top_p=self.top_p,
                min_p=self.min_p, sampling_config=self.sampling_config,
                max_new_tokens=self.max_new_tokens, seed=self.seed, engine=self.engine,
                progress=progress, **opts)
        return generate(self.models, self.read_prompts(), self.output,
                        temperatures=self.temperatures, top_k=self.top_k, top_p=self.top_p,
                        min_p=self.min_p, sampling_config=self.sampling_config,
                        max_new_tokens=self.max_new_tokens, stop_at_eos=self.stop_at_eos,
                        seed=self.seed, engine=self.engine, canonical=self.canonical,
                        retokenize_every=self.retokenize_every, progress=progress,
                        **self.engine_options)
