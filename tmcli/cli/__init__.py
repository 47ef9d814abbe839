"""The command line (`tmcli`): a thin layer that parses options, checks every output path
before any work (`paths`: one policy for every command), calls the public API and renders.

`app` holds the Typer application, the exit codes and the options the commands share; the
commands live by what they do: `measure` (analyze, check, selftest, report, diff, filter),
`generate` (generate, score) and `models` (models, models install); `sweep_spec` turns
generate's options into the typed `SweepSpec` it hands to `tmcli.generate`. Importing this package
registers them all; nothing here imports torch, transformers or vLLM.
"""

from tmcli.cli import generate, measure, models  # noqa: E402,F401  (registers the commands, in pipeline order)
from tmcli.cli.app import app, fail, main

__all__ = ["app", "fail", "main"]
