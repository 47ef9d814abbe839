"""The one sampler every engine uses: temperature sampling, truncated or not, as a seeded per-row
race.

Each row (one prompt at one temperature) draws its noise from its own generator, seeded from
(seed, prompt, temperature), one vocabulary-wide draw per sampled token. A row's samples then
depend on its seed and its logits only: not on the rows it shares a batch with, nor on the engine
that computed the logits (the fused decoder, transformers, or vLLM, where `NoiseStream` runs
inside a logits processor). On CPU the generators are numpy's PCG64; on an accelerator they are
torch generators on that device, so draws agree across engines on the same kind of device.

Truncation (top-k, top-p, min-p; `tmcli.generation.truncation`) sets the tokens a row's settings
drop to -inf before the race, so the race draws from the kept tokens renormalised. Nothing is
inherited from a model's generation config unless asked for (``--sampling-config model``), and
no penalties are applied.
"""

from __future__ import annotations

from collections.abc import Sequence


def race_scores(logits, temperatures, log_noise, truncation=None):
    """The scores whose argmax is a row's sample: ``logit / T - log E`` (``log_noise``) over the
    tokens the row's `Truncation` keeps (the others -inf), and the logits themselves for T=0 rows
    (``log_noise`` may be None when every row is greedy). ``truncation``: one setting per row,
    or None for pure sampling.

    Exponential race (Gumbel-max): with E_i ~ Exp(1), argmax of p_i / E_i is token i with
    probability p_i, and the argmax over any subset of tokens is a draw from the distribution
    renormalised to that subset (truncation and canonical sampling mask tokens this way)."""
    return _race(logits, temperatures, log_noise, truncation)[0]


def sample(logits, temperatures, log_noise, truncation=None):
    """Temperature sampling, one temperature (and truncation) per row; T=0 rows are greedy.

    The argmax of `race_scores`. Unlike inverse-CDF sampling, whose cumulative sum over the whole
    vocabulary turns float rounding into a different token now and then, a draw here only changes
    when two tokens' scores tie to within rounding, so the rows a record shared its batch with do
    not change its samples."""
    import torch

    scores, one_thread = _race(logits, temperatures, log_noise, truncation)
    if one_thread:  # the first highest, as torch's argmax
        return torch.from_numpy(scores.numpy().argmax(-1))
    return scores.argmax(-1)


def _race(logits, temperatures, log_noise, truncation):
    """(`race_scores`, whether they were made on one thread). Truncating on a CPU is mostly
    numpy's one-threaded work (its sort), so the division and the noise around it are done there
    too (the same floats): a torch op between them would wake torch's second thread, whose idle
    spinning through the numpy work that follows costs more CPU time than the op saves."""
    import numpy as np
    import torch

    greedy = temperatures == 0
    if bool(greedy.all()):
        return logits, False
    t = torch.where(greedy, torch.ones_like(temperatures), temperatures)
    rows = None
    if truncation is not None:
        from tmcli.generation.top_p import on_cpu
        from tmcli.generation.truncation import NONE, truncate_

        rows = [NONE if g else s for s, g in zip(truncation, greedy.tolist())]
        if not any(s.active for s in rows):
            rows = None
    one_thread = rows is not None and log_noise is not None and all(
        on_cpu(x) and not x.requires_grad for x in (logits, t, log_noise))
    if one_thread:
        scores = torch.from_numpy(np.divide(logits.numpy(), t.numpy()[:, None]))
    else:
        scores = torch.div(logits, t[:, None])
    if rows is not None:
        truncate_(scores, rows)
    if one_thread:
        np.subtract(scores.numpy(), log_noise.numpy(), out=scores.numpy())
    else:
        scores.sub_(log_noise)
    if bool(greedy.any()):
        scores[greedy] = logits[greedy]
    return scores, one_thread


def _to_log_noise(uniform):
    """U ~ Uniform(0, 1) in place to log E with E = -log U ~ Exp(1)."""
    return uniform.log_().neg_().log_()


class NoiseStream:
    """One row's generator, addressed by step: ``draw(k)`` is the noise of the row's k-th sampled
    token. Asking for the same step again (vLLM samples and discards a row whose prompt is still
    being prefilled in chunks) gives the same draw; a later step skips the draws in between (a
    preempted request comes back with tokens already sampled)."""

    def __init__(self, seed: int, device):
        import numpy as np
        import torch

        self.device = torch.device(device)
        self.cpu = self.device.type == "cpu"
        self.gen = np.random.default_rng(seed) if self.cpu else \
            torch.Generator(device=self.device).manual_seed(seed)
        self.drawn = 0  # draws made
        self.before = None  # generator state before the last draw

    def _state(self):
        return self.gen.bit_generator.state if self.cpu else self.gen.get_state()

    def _restore(self, state) -> None:
        if self.cpu:
            self.gen.bit_generator.state = state
        else:
            self.gen.set_state(state)

    def fill(self, out) -> None:
        """The next draw of uniforms into ``out`` (a float32 numpy row on CPU, a tensor else)."""
        if self.cpu:
            self.gen.random(out=out, dtype="float32")
        else:
            out.uniform_(generator=self.gen)

    def draw(self, step: int, vocab: int):
        """log E for this row's ``step``-th sampled token, as a float32 tensor on the device."""
        import numpy as np
        import torch

        if step == self.drawn - 1 and self.before is not None:
            self._restore(self.before)
            self.drawn -= 1
        if step < self.drawn:
            raise ValueError(f"noise for step {step} is gone (the stream is at {self.drawn})")
        buf = np.empty(vocab, dtype=np.float32) if self.cpu else \
            torch.empty(vocab, device=self.device)
        while self.drawn < step:  # skipped steps
            self.fill(buf)
            self.drawn += 1
        self.before = self._state()
        self.fill(buf)
        self.drawn += 1
        return _to_log_noise(torch.from_numpy(buf) if self.cpu else buf)


class RowNoise:
    """log E for a batch of rows, one draw per vocabulary entry per step, each from its row's own
    generator (the same stream `NoiseStream` gives). Greedy rows (seed None) draw nothing.

    On CPU numpy's PCG64 fills a row faster than torch's Mersenne twister; on accelerators each
    row has a torch generator on the device."""

    def __init__(self, seeds: Sequence[int | None], device):
        import torch

        self.device = torch.device(device)
        self.streams = [None if s is None else NoiseStream(s, self.device) for s in seeds]

    def draw(self, rows: Sequence[int], vocab: int):
        import numpy as np
        import torch

        cpu = self.device.type == "cpu"
        buf = np.full((len(rows), vocab), 1 / np.e, dtype=np.float32) if cpu else \
            torch.full((len(rows), vocab), 1 / torch.e, device=self.device)
        for i, r in enumerate(rows):
            if self.streams[r] is not None:
                self.streams[r].fill(buf[i])
        return _to_log_noise(torch.from_numpy(buf) if cpu else buf)
