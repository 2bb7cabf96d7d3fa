"""The `onegate` command line.

Every command takes ``--data-dir`` (env ``ONEGATE_DATA_DIR``, default ``./var``) and
``--config``; commands that print records take ``--json``. Problems with configuration
or dependencies end the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from keyvault import (
    ENV_MASTER_KEY,
    ENV_MASTER_KEY_PREVIOUS,
    KeyvaultError,
    master_key_path,
    rotate_master_key,
)
from onegate import __version__
from onegate.cli_admin import admin_app
from onegate.cli_clients import app as clients_app
from onegate.cli_common import (
    ConfigFile,
    DataDir,
    Json,
    emit_json,
    fail,
    run,
    settings_from,
    with_runtime,
)
from onegate.cli_policy import policy_app
from onegate.cli_routes import gateway_app
from onegate.cli_soc import soc_app
from onegate.cli_users import app as users_app
from onegate.command import SERVER_COMMANDS
from onegate.runtime import Runtime, open_vault

if TYPE_CHECKING:
    from core.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="onegate",
    help="OneGate: zero-trust identity, single sign-on and security operations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Keys: signing keys and the master key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="user")
app.add_typer(clients_app, name="client")
app.add_typer(policy_app, name="policy")
app.add_typer(gateway_app, name="gateway")
app.add_typer(admin_app, name="admin")
app.add_typer(soc_app, name="soc")


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"onegate {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """OneGate command line."""


@app.command()
def init(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Create the data dir, migrate the database, create keys and the first administrator."""
    from onegate.bootstrap import initialise

    settings = settings_from(data_dir, config)
    result = run(initialise(settings))
    if as_json:
        emit_json(result.__dict__)
        return
    typer.echo(f"data dir: {result.data_dir}")
    typer.echo(f"database: {result.database}")
    if result.admin_password:
        typer.echo(f"administrator: {result.admin_username}")
        typer.echo(f"one-time password (shown once; change it at first sign-in): {result.admin_password}")
    else:
        typer.echo("already initialised; nothing was replaced")


# The servers are click commands of onegate.command (started without this module); these two
# entries list them here and pass their arguments on.
_PASS_ON = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASS_ON, help=SERVER_COMMANDS["serve"].help, add_help_option=False)
def serve(ctx: typer.Context) -> None:
    SERVER_COMMANDS["serve"].main(ctx.args, prog_name="onegate serve")


@app.command(context_settings=_PASS_ON, help=SERVER_COMMANDS["demo"].help, add_help_option=False)
def demo(ctx: typer.Context) -> None:
    SERVER_COMMANDS["demo"].main(ctx.args, prog_name="onegate demo")


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """List signing keys with their state (pending, active, retired)."""
    settings = settings_from(data_dir, config)

    def list_keys() -> list[dict[str, Any]]:
        return [asdict(info) for info in open_vault(settings).signing.list_keys()]

    records = _vault_call(list_keys)
    if as_json:
        emit_json(records)
        return
    typer.echo(f"{'kid':<44} {'alg':<6} {'state':<8} {'created':<20} {'signs from':<20} retire until")
    for r in records:
        typer.echo(
            f"{r['kid']:<44} {r['alg']:<6} {r['state']:<8} {_when(r['created_at']):<20} "
            f"{_when(r['activates_at']):<20} {_when(r['retire_until'])}"
        )


@keys_app.command("rotate")
def keys_rotate(
    immediate: Annotated[
        bool, typer.Option("--immediate", help="Sign with the new key at once (the old key is compromised).")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Add a new signing key; it is published now and signs after the pre-publication delay."""
    settings = settings_from(data_dir, config)

    def rotate() -> dict[str, Any]:
        signing = open_vault(settings).signing
        kid = signing.rotate(immediate=immediate)
        return next(asdict(info) for info in signing.list_keys() if info.kid == kid)

    record = _vault_call(rotate)
    if as_json:
        emit_json(record)
        return
    typer.echo(
        f"new signing key {record['kid']} ({record['alg']}): published now, signs from "
        f"{_when(record['activates_at'])}"
    )


@keys_app.command("revoke")
def keys_revoke(
    kid: Annotated[str, typer.Argument(help="The key to withdraw (not the active one).")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Withdraw a signing key at once: it leaves the JWKS and tokens it signed stop verifying."""
    settings = settings_from(data_dir, config)
    _vault_call(lambda: open_vault(settings).signing.revoke(kid))
    typer.echo(f"revoked signing key {kid}")


@keys_app.command("purge")
def keys_purge(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Delete retired signing keys whose tokens have all expired."""
    settings = settings_from(data_dir, config)
    purged = _vault_call(lambda: open_vault(settings).signing.purge())
    if as_json:
        emit_json({"purged": purged})
        return
    typer.echo(f"purged {len(purged)} retired key(s)" + "".join(f"\n  {kid}" for kid in purged))


@keys_app.command("rotate-master")
def keys_rotate_master(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Add a new master key to the key file, make it active and re-wrap the data keys under it."""
    settings = settings_from(data_dir, config)
    if os.environ.get(ENV_MASTER_KEY, "").strip():
        raise fail(
            f"the master key comes from {ENV_MASTER_KEY}: put a new key there, the old one in "
            f"{ENV_MASTER_KEY_PREVIOUS}, then run `onegate keys rewrap` (docs/keyvault.md)"
        )

    def rotate() -> dict[str, Any]:
        new_id = rotate_master_key(master_key_path(settings.data_dir))
        return {"active_master_key": new_id, "rewrapped": open_vault(settings).rewrap()}

    result = _vault_call(rotate)
    result["rewrapped"].update(_rewrap_database(settings))
    _report_rewrap(result, as_json)


@keys_app.command("rewrap")
def keys_rewrap(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Re-wrap every data key under the active master key (after a rotation in the environment)."""
    settings = settings_from(data_dir, config)

    def rewrap() -> dict[str, Any]:
        vault = open_vault(settings)
        return {"active_master_key": vault.keyring.active_id, "rewrapped": vault.rewrap()}

    result = _vault_call(rewrap)
    result["rewrapped"].update(_rewrap_database(settings))
    _report_rewrap(result, as_json)


def _rewrap_database(settings: Settings) -> dict[str, int]:
    """Re-wrap the encrypted records other components keep in the database (TOTP seeds)."""

    async def work(runtime: Runtime) -> dict[str, int]:
        from mfa.totp import TotpService

        totp = TotpService(runtime.sessions, runtime.vault.envelope, runtime.kv)
        return {"totp_seeds": await totp.rewrap()}

    return with_runtime(settings, work, errors=(KeyvaultError,))


def _report_rewrap(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in result["rewrapped"].items())
    typer.echo(f"active master key {result['active_master_key']}; re-wrapped {counts}")
    typer.echo("restart every OneGate process that shares this data dir to load the new key")


def _vault_call(call: Callable[[], T]) -> T:
    try:
        return call()
    except KeyvaultError as e:
        raise fail(str(e)) from None


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def command() -> Any:
    """The whole command line as a click group (typer's)."""
    return typer.main.get_command(app)


if __name__ == "__main__":
    from onegate.command import main

    main()
