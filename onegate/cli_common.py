"""What every `onegate` command shares: options, settings, one-line errors, JSON and tables.

Problems with configuration or dependencies end a command with one line on stderr
(``onegate: ...``) and exit status 2, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from core.events import Category, Event, Outcome
from core.settings import Settings
from onegate import command
from onegate.runtime import Runtime, open_runtime

if TYPE_CHECKING:
    from idp.directory.models import User

__all__ = [
    "ConfigFile",
    "DataDir",
    "Json",
    "actor",
    "emit_json",
    "fail",
    "iam_event",
    "run",
    "settings_from",
    "table",
    "with_runtime",
]

T = TypeVar("T")


def iam_event(action: str, user: User | None = None, *, types: tuple[str, ...], **fields: Any) -> Event:
    """An administrative change (ECS event.category iam) made from the command line, naming the
    operating-system account that ran it (``labels.actor``); ``fields`` use ``__`` for dots."""
    values: dict[str, Any] = {"event.type": list(types), "labels.actor": actor()}
    if user is not None:
        values["user.name"] = user.username
        values["user.id"] = str(user.id)
    values.update({key.replace("__", "."): value for key, value in fields.items()})
    return Event(
        action=action, category=Category.IAM, outcome=Outcome.SUCCESS, dataset="onegate.cli", fields=values
    )


DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="ONEGATE_DATA_DIR", help="Data directory [default: ./var]."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", envvar="ONEGATE_CONFIG", help="YAML configuration file.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str) -> typer.Exit:
    """Print the one line and return the exit to raise."""
    typer.echo(f"onegate: {message}", err=True)
    return typer.Exit(2)


def settings_from(data_dir: Path | None, config: Path | None, **overrides: Any) -> Settings:
    return command.settings_from(data_dir, config, overrides, fail=fail)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion; start-up problems become one line."""
    return command.run(coro, fail=fail)


def with_runtime(
    settings: Settings,
    work: Callable[[Runtime], Awaitable[T]],
    *,
    errors: tuple[type[Exception], ...] = (),
) -> T:
    """Open the runtime (dependencies checked), run ``work``, close; errors become one line.

    ``errors`` are the domain's own exceptions, whose messages are written for operators.
    """

    async def session() -> T:
        runtime = await open_runtime(settings)
        try:
            await runtime.bus.start()
            return await work(runtime)
        finally:
            await runtime.close()

    try:
        return run(session())
    except errors as e:
        raise fail(str(e)) from None
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise fail(f"database error: {reason}") from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:  # the operator gets one line, never a traceback
        raise fail(f"unexpected error: {type(e).__name__}: {e}".splitlines()[0]) from None


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def actor() -> str:
    """Who runs this command, for the ``labels.actor`` of the events it emits."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (containers)
        return f"cli:uid-{os.getuid()}"


def _width(text: str) -> int:
    # Chinese characters take two terminal columns.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Print aligned columns (Chinese-aware widths)."""
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        cells = (cell + " " * max(w - _width(cell), 0) for cell, w in zip(line, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())
