"""Test helpers: what the code reads from the environment, and whether a command line parses in `morlaif`."""

from __future__ import annotations

import pytest
import typer

__all__ = ["CliMismatch", "check_cli_args", "cli_env_vars"]


def cli_env_vars() -> set[str]:
    """Every environment variable the code reads: server settings, CLI options' envvars, direct reads."""
    from morlaif import envvars
    from morlaif_cli.main import app
    from pm_server.serving.config import ServerSettings

    names = {f"MORLAIF_{f.upper()}" for f in ServerSettings.model_fields}
    names |= set(envvars.DIRECT)

    def walk(cmd) -> None:
        for p in cmd.params:
            ev = getattr(p, "envvar", None)
            if isinstance(ev, str):
                names.add(ev)
            elif ev:
                names.update(ev)
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for sub in cmd.commands.values():
                walk(sub)

    walk(typer.main.get_command(app))
    return names


class CliMismatch(Exception):
    """A command line that `morlaif` would refuse."""


def check_cli_args(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Parse argv as `morlaif` would (sub-commands, options, types) without running it; CliMismatch if not."""
    from morlaif_cli.main import app

    cmd = typer.main.get_command(app)
    args = list(argv)
    while hasattr(cmd, "commands"):
        if not args:
            raise CliMismatch(f"{cmd.name}: no sub-command given")
        name = args.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            raise CliMismatch(f"{cmd.name}: no sub-command {name!r}")
        cmd = sub
    mp = pytest.MonkeyPatch()
    try:
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        cmd.make_context(cmd.name or "", args)
    except typer.TyperException as e:
        raise CliMismatch(f"morlaif {' '.join(argv)}: {e.format_message()}") from e
    finally:
        mp.undo()
