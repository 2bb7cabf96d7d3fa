"""`onegate client ...`: OIDC clients (relying parties) from the command line."""

from __future__ import annotations

import typer

app = typer.Typer(help="OIDC clients: add, list, show, rotate secrets, remove.", no_args_is_help=True)
