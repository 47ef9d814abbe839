"""What `generate` and `score` report their progress to: any object with the methods of
`Progress` (the CLI passes a Rich bar on a terminal and plain lines in a log, see
`tmcli.cli.generate`), or nothing (`NoProgress`). Progress is counted in tokens, so a bar's total
is known before the first batch and rows that stop early at EOS are made up for at once.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Told how far a run is: ``start`` once, then ``describe``/``note`` and ``advance`` as it
    goes. ``bars``: whether a library may draw its own Rich bars (converting a model), which only
    a terminal shows well."""

    bars: bool

    def start(self, total: int) -> None:
        """The run has ``total`` tokens to produce (or score)."""

    def describe(self, text: str) -> None:
        """What the run is doing now ("loading smollm2-135m", "smollm2-135m (fused)")."""

    def note(self, text: str) -> None:
        """A one-off message worth keeping (a slow first-use conversion)."""

    def advance(self, tokens: int) -> None:
        """``tokens`` more are done."""


class NoProgress:
    """Shows nothing; subclass it to show only part (each method is a no-op)."""

    bars = False

    def start(self, total: int) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def advance(self, tokens: int) -> None:
        pass
