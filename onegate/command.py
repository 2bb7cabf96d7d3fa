"""The `onegate` command: the servers start without loading the administration commands.

``onegate serve`` and ``onegate demo`` are plain click commands defined here; every other
command lives in :mod:`onegate.cli` (typer), which is imported only when one of them runs or
when the whole command list is shown. A server process thus keeps neither typer nor the
administration modules (and what they import) in memory.

Problems with configuration or dependencies end a command with one line on stderr
(``onegate: ...``) and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["SERVER_COMMANDS", "fail", "main", "run", "settings_from"]

T = TypeVar("T")

_data_dir = click.option(
    "--data-dir",
    envvar="ONEGATE_DATA_DIR",
    type=click.Path(path_type=Path),
    help="Data directory [default: ./var].",
)
_config = click.option(
    "--config", envvar="ONEGATE_CONFIG", type=click.Path(path_type=Path), help="YAML configuration file."
)
_port = click.option("--port", type=int, help="The one public port (0: any free port).")


def fail(message: str) -> click.exceptions.Exit:
    """Print the one line and return the exit to raise."""
    click.echo(f"onegate: {message}", err=True)
    return click.exceptions.Exit(2)


def settings_from(
    data_dir: Path | None,
    config: Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    fail: Callable[[str], Exception] = fail,
) -> Settings:
    """Settings from the file, the environment and ``overrides`` (``None``: not given); logging
    configured. ``fail`` makes the exit of the command framework in use."""
    from core.logging import configure_logging
    from core.settings import ConfigError, load_settings

    values = {key: value for key, value in (overrides or {}).items() if value is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        settings = load_settings(config, overrides=values)
    except ConfigError as e:
        raise fail(f"configuration error: {e}") from None
    configure_logging(settings.log.level, json=settings.log.json_lines)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step is noise here
    return settings


def run(coro: Coroutine[Any, Any, T], *, server: bool = False, fail: Callable[[str], Exception] = fail) -> T:
    """Run ``coro`` to completion; start-up problems become one line. ``server``: on uvloop,
    the event loop the servers are measured on (about twice the requests per core)."""
    from onegate.runtime import StartupError

    try:
        if server:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)
    except StartupError as e:
        raise fail(str(e)) from None


def _server_process() -> None:
    """A server writes to a log, never to a terminal: structlog's optional console pretty-printer
    (rich, installed for the command line's help pages) would only take memory (about 4 MiB)."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # import rich -> ImportError


@click.command()
@click.option("--role", default="all", show_default=True, help="idp | gateway | soc | all")
@_port
@click.option("--host", help="Bind address.")
@_data_dir
@_config
def serve(role: str, port: int | None, host: str | None, data_dir: Path | None, config: Path | None) -> None:
    """Serve one role, or all of them on one port."""
    _server_process()
    from onegate.apps import ROLES
    from onegate.launch import run_server

    if role not in ROLES:
        raise fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    settings = settings_from(data_dir, config, {"server.port": port, "server.host": host})
    run(run_server(settings, role=role), server=True)


@click.command()
@_port
@_data_dir
@_config
def demo(port: int | None, data_dir: Path | None, config: Path | None) -> None:
    """Initialise if needed and serve every role; writes <data dir>/demo.json once ready."""
    _server_process()
    from onegate.launch import run_demo

    settings = settings_from(data_dir, config, {"server.port": port})
    run(run_demo(settings), server=True)


SERVER_COMMANDS: dict[str, click.Command] = {"serve": serve, "demo": demo}


def main(argv: Sequence[str] | None = None) -> None:
    # Everything OneGate writes (database, keys, spool) is for its own user only.
    os.umask(0o077)
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SERVER_COMMANDS:
        SERVER_COMMANDS[args[0]].main(args[1:], prog_name=f"onegate {args[0]}")
        return
    from onegate.cli import command

    command().main(args, prog_name="onegate")
