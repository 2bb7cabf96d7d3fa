"""`onegate user ...`: the directory from the command line."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Users: add, list, lock, unlock, disable, reset passwords, import CSV.", no_args_is_help=True
)
