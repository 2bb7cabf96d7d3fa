"""`onegate admin api-keys create|list|revoke`: the keys that may call the admin API.

A key is printed once, when it is made, and stored only as a keyed hash (onegate.admin.keys);
keep it in a secret store. ``revoke`` takes the key's id (or its name, when one active key has
it); the key is refused from the next request on. Usage and dependency problems end with one
line and exit status 2.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onegate.cli_common import ConfigFile, DataDir, Json, actor, emit_json, table, with_runtime
from onegate.cli_policy_store import data_dir_settings

if TYPE_CHECKING:
    from onegate.admin.keys import AdminKey
    from onegate.runtime import Runtime

# The admin API (onegate.admin) is imported by the commands that use it: every `onegate`
# process, servers included, imports this module to build the command line.

__all__ = ["admin_app", "keys_app"]

admin_app = typer.Typer(
    help="Administration: the admin API's keys. / 管理：管理 API 密钥。", no_args_is_help=True
)
keys_app = typer.Typer(
    help="Admin API keys (Authorization: Bearer oga_...). / 管理 API 密钥。", no_args_is_help=True
)
admin_app.add_typer(keys_app, name="api-keys")


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@keys_app.command("create")
def create_command(
    name: Annotated[
        str, typer.Option("--name", help="Who or what uses it (e.g. ci-deploy).", show_default=False)
    ],
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", min=1, max=3650, help="Refused after this many days.")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Make a key; it is printed once and stored only as a hash."""
    from onegate.admin.app import admin_keys
    from onegate.admin.keys import AdminKeyError

    settings = data_dir_settings(data_dir, config)
    lifetime = timedelta(days=expires_days) if expires_days is not None else None

    async def work(runtime: Runtime) -> tuple[AdminKey, str]:
        return await admin_keys(runtime).create(name, actor=actor(), expires_in=lifetime)

    key, secret = with_runtime(settings, work, errors=(AdminKeyError,))
    if as_json:
        emit_json(key.as_dict(datetime.now(UTC)) | {"key": secret})
        return
    typer.echo(
        f"admin API key {key.id} ({key.name})"
        + (f", expires {_when(key.expires_at)} UTC" if key.expires_at else "")
    )
    typer.echo(f"key (shown once; keep it in a secret store / 仅显示一次，请妥善保存): {secret}")


@keys_app.command("list")
def list_command(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """Every key, revoked ones too (never the keys themselves)."""
    from onegate.admin.app import admin_keys

    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> list[AdminKey]:
        return await admin_keys(runtime).all()

    keys = with_runtime(settings, work)
    now = datetime.now(UTC)
    if as_json:
        emit_json([k.as_dict(now) for k in keys])
        return
    if not keys:
        typer.echo("no admin API keys / 没有管理 API 密钥")
        return
    rows: list[list[Any]] = [
        [
            k.id,
            k.name,
            k.state(now),
            _when(k.created_at),
            k.created_by,
            _when(k.expires_at),
            _when(k.last_used_at),
        ]
        for k in keys
    ]
    table(["id", "name", "state", "created (UTC)", "by", "expires", "last used"], rows)


@keys_app.command("revoke")
def revoke_command(
    key: Annotated[str, typer.Argument(help="The key's id, or its name.", show_default=False)],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Revoke a key: refused from the next request on."""
    from onegate.admin.app import admin_keys
    from onegate.admin.keys import AdminKeyError

    settings = data_dir_settings(data_dir, config)

    async def work(runtime: Runtime) -> AdminKey:
        return await admin_keys(runtime).revoke(key, actor=actor())

    revoked = with_runtime(settings, work, errors=(AdminKeyError,))
    if as_json:
        emit_json(revoked.as_dict(datetime.now(UTC)))
        return
    typer.echo(f"revoked admin API key {revoked.id} ({revoked.name}) / 已吊销")
