"""`onegate client ...`: OIDC clients (relying parties) from the command line.

Every command takes ``--data-dir`` and ``--config`` like the rest of ``onegate``; commands
that print records take ``--json``. A problem (bad metadata, unknown client, unreachable
database) ends the command with one line ``onegate: ...`` on stderr and exit status 2.

``add`` and ``rotate-secret`` print the client secret once (``--json``: ``client_id`` and
``client_secret``); only a keyed hash is stored, and ``show`` / ``list`` never print it.
Changes emit configuration events (``client-created``, ``client-updated``,
``client-secret-rotated``, ``client-removed``) on the runtime's bus, naming the
operating-system account that ran the command as ``labels.actor``.

Running servers keep a client in memory for up to 5 seconds: a change made here (a rotated
secret, a removed client) is in force everywhere within that time.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from idp.clients.services import (
    DEFAULT_GRANT_TYPES,
    DEFAULT_SCOPES,
    ClientError,
    ClientRegistry,
    RegisteredClient,
)
from onegate.cli_common import (
    ConfigFile,
    DataDir,
    Json,
    actor,
    emit_json,
    fail,
    settings_from,
    table,
    with_runtime,
)

if TYPE_CHECKING:
    from core.settings import Settings
    from onegate.runtime import Runtime

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="OIDC clients: add, list, show, update, rotate secrets, disable, enable, remove.",
    no_args_is_help=True,
)

# The same options as onegate/cli.py (which imports this module, so they cannot come from there).
ClientId = Annotated[str, typer.Argument(help="The client_id.")]

Name = Annotated[str | None, typer.Option("--name", help="Display name, e.g. 协同办公系统.")]
NameEn = Annotated[str | None, typer.Option("--name-en", help="English display name.")]
AuthMethodOption = Annotated[
    str | None,
    typer.Option(
        "--auth-method",
        help="client_secret_basic (default), client_secret_post or private_key_jwt; public clients: none.",
    ),
]
RedirectUris = Annotated[
    list[str] | None,
    typer.Option("--redirect-uri", help="Exact redirect URI, https (http only on localhost); repeatable."),
]
PostLogoutUris = Annotated[
    list[str] | None,
    typer.Option("--post-logout-redirect-uri", help="Exact URI to return to after logout; repeatable."),
]
GrantTypes = Annotated[
    list[str] | None,
    typer.Option(
        "--grant-type",
        help="authorization_code, refresh_token, client_credentials; repeatable "
        "[default: authorization_code + refresh_token].",
    ),
]
Scopes = Annotated[
    list[str] | None,
    typer.Option("--scope", help="An allowed scope; repeatable [default: openid profile email]."),
]
BackchannelUri = Annotated[
    str | None, typer.Option("--backchannel-logout-uri", help="Where logout tokens are POSTed.")
]
JwksFile = Annotated[
    Path | None,
    typer.Option("--jwks-file", help="JSON file: the public JWK Set (private_key_jwt)."),
]
JwksUri = Annotated[str | None, typer.Option("--jwks-uri", help="URL of the client's public JWK Set.")]
IdTokenLifetime = Annotated[int | None, typer.Option("--id-token-lifetime", help="Seconds (60-86400).")]
AccessTokenLifetime = Annotated[
    int | None, typer.Option("--access-token-lifetime", help="Seconds (60-86400).")
]
RefreshTokenLifetime = Annotated[
    int | None, typer.Option("--refresh-token-lifetime", help="Seconds (300-2592000).")
]
Description = Annotated[str | None, typer.Option("--description", help="A note for administrators.")]
MinimumAcr = Annotated[
    str | None,
    typer.Option(
        "--minimum-acr",
        help="Weakest sign-in the application accepts: urn:onegate:acr:pwd, urn:onegate:acr:mfa "
        '(a second factor) or urn:onegate:acr:phr (a passkey / security key); "" clears it.',
    ),
]


# -- plumbing ---------------------------------------------------------------------------------------


def _with_registry(settings: Settings, work: Callable[[ClientRegistry], Awaitable[T]]) -> T:
    """Run ``work`` on a registry over the checked runtime; errors are one line."""

    def on_registry(runtime: Runtime) -> Awaitable[T]:
        return work(ClientRegistry(runtime.sessions, runtime.vault.secrets, events=runtime.bus))

    return with_runtime(settings, on_registry, errors=(ClientError,))


def _read_jwks(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise fail(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"{path} is not JSON: {e}".splitlines()[0]) from None
    if not isinstance(value, dict):
        raise fail(f'{path} must hold a JWK Set: {{"keys": [...]}}')
    return value


def _print_client(client: RegisteredClient) -> None:
    record = client.public_dict()
    jwks = record.pop("jwks")
    if jwks is not None:
        kids = [str(k.get("kid", "-")) for k in jwks.get("keys", []) if isinstance(k, dict)]
        record["jwks"] = f"{len(kids)} public key(s): {', '.join(kids)}"
    for key, value in record.items():
        if isinstance(value, list):
            shown = " ".join(value) if value else "-"
        else:
            shown = "-" if value is None else str(value)
        typer.echo(f"{key + ':':<37} {shown}")


def _print_secret(secret: str) -> None:
    typer.echo(f"{'client_secret:':<37} {secret}")
    typer.echo("the secret is shown only now: store it in the application's secret store")


# -- commands ---------------------------------------------------------------------------------------


@app.command("add")
def add(
    *,
    name: Annotated[str, typer.Option("--name", help="Display name, e.g. 协同办公系统.")],
    name_en: NameEn = None,
    public: Annotated[
        bool, typer.Option("--public", help="A public client (SPA, mobile app): no secret, PKCE required.")
    ] = False,
    auth_method: AuthMethodOption = None,
    redirect_uri: RedirectUris = None,
    post_logout_redirect_uri: PostLogoutUris = None,
    grant_type: GrantTypes = None,
    scope: Scopes = None,
    first_party: Annotated[
        bool,
        typer.Option("--first-party", help="Run by the city itself: no consent page."),
    ] = False,
    backchannel_logout_uri: BackchannelUri = None,
    minimum_acr: MinimumAcr = None,
    jwks_file: JwksFile = None,
    jwks_uri: JwksUri = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="The client_id [default: generated].")
    ] = None,
    id_token_lifetime: IdTokenLifetime = None,
    access_token_lifetime: AccessTokenLifetime = None,
    refresh_token_lifetime: RefreshTokenLifetime = None,
    description: Description = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Register a client; a confidential client's secret is printed once."""
    settings = settings_from(data_dir, config)
    jwks = _read_jwks(jwks_file) if jwks_file is not None else None

    async def work(registry: ClientRegistry) -> tuple[RegisteredClient, str | None]:
        return await registry.add(
            client_id=client_id,
            name=name,
            name_en=name_en,
            client_type="public" if public else "confidential",
            token_endpoint_auth_method=auth_method,
            redirect_uris=redirect_uri or [],
            post_logout_redirect_uris=post_logout_redirect_uri or [],
            grant_types=grant_type or DEFAULT_GRANT_TYPES,
            scopes=scope or DEFAULT_SCOPES,
            first_party=first_party,
            minimum_acr=minimum_acr or None,
            backchannel_logout_uri=backchannel_logout_uri,
            jwks=jwks,
            jwks_uri=jwks_uri,
            id_token_lifetime=id_token_lifetime,
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
            description=description,
            actor=actor(),
        )

    client, secret = _with_registry(settings, work)
    if as_json:
        emit_json({**client.public_dict(), "client_secret": secret})
        return
    _print_client(client)
    if secret is not None:
        _print_secret(secret)


@app.command("list")
def list_clients(data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False) -> None:
    """List every client (never secrets)."""
    settings = settings_from(data_dir, config)

    async def work(registry: ClientRegistry) -> list[RegisteredClient]:
        return await registry.list()

    clients = _with_registry(settings, work)
    if as_json:
        emit_json([c.public_dict() for c in clients])
        return
    if not clients:
        typer.echo("no clients")
        return
    table(
        ["CLIENT_ID", "TYPE", "AUTH", "STATUS", "NAME"],
        [
            [
                c.client_id,
                c.client_type.value,
                c.token_endpoint_auth_method.value,
                "disabled" if c.disabled else "active",
                c.name,
            ]
            for c in clients
        ],
    )


@app.command("show")
def show(
    client_id: ClientId, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Show one client's registration (never its secret)."""
    settings = settings_from(data_dir, config)

    async def work(registry: ClientRegistry) -> RegisteredClient:
        return await registry.require(client_id)

    client = _with_registry(settings, work)
    if as_json:
        emit_json(client.public_dict())
        return
    _print_client(client)


def _cleared(values: list[str] | None) -> list[str] | None:
    # A single empty value clears a list (repeatable options cannot say "none" otherwise).
    if values is None:
        return None
    return [] if values == [""] else values


@app.command("update")
def update(
    client_id: ClientId,
    *,
    name: Name = None,
    name_en: NameEn = None,
    auth_method: AuthMethodOption = None,
    redirect_uri: RedirectUris = None,
    post_logout_redirect_uri: PostLogoutUris = None,
    grant_type: GrantTypes = None,
    scope: Scopes = None,
    first_party: Annotated[
        bool | None, typer.Option("--first-party/--third-party", help="Skip consent, or ask for it.")
    ] = None,
    pkce: Annotated[
        bool | None, typer.Option("--pkce/--no-pkce", help="Require PKCE (always on for public clients).")
    ] = None,
    backchannel_logout_uri: BackchannelUri = None,
    minimum_acr: MinimumAcr = None,
    jwks_file: JwksFile = None,
    jwks_uri: JwksUri = None,
    id_token_lifetime: IdTokenLifetime = None,
    access_token_lifetime: AccessTokenLifetime = None,
    refresh_token_lifetime: RefreshTokenLifetime = None,
    description: Description = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Json = False,
) -> None:
    """Change a client. List options replace the whole list; "" clears a value, 0 a lifetime."""
    settings = settings_from(data_dir, config)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    for key, text in (
        ("name_en", name_en),
        ("backchannel_logout_uri", backchannel_logout_uri),
        ("jwks_uri", jwks_uri),
        ("description", description),
        ("minimum_acr", minimum_acr),
    ):
        if text is not None:
            changes[key] = text or None
    if auth_method is not None:
        changes["token_endpoint_auth_method"] = auth_method
    for key, values in (
        ("redirect_uris", _cleared(redirect_uri)),
        ("post_logout_redirect_uris", _cleared(post_logout_redirect_uri)),
        ("grant_types", grant_type),
        ("scopes", scope),
    ):
        if values is not None:
            changes[key] = values
    if first_party is not None:
        changes["first_party"] = first_party
    if pkce is not None:
        changes["require_pkce"] = pkce
    for key, seconds in (
        ("id_token_lifetime", id_token_lifetime),
        ("access_token_lifetime", access_token_lifetime),
        ("refresh_token_lifetime", refresh_token_lifetime),
    ):
        if seconds is not None:
            changes[key] = seconds or None
    if jwks_file is not None:
        changes["jwks"] = _read_jwks(jwks_file)
    if not changes:
        raise fail("nothing to change: name an option to update (see --help)")

    async def work(registry: ClientRegistry) -> tuple[RegisteredClient, str | None]:
        return await registry.update(client_id, actor=actor(), **changes)

    client, secret = _with_registry(settings, work)
    if as_json:
        emit_json({**client.public_dict(), "client_secret": secret})
        return
    _print_client(client)
    if secret is not None:
        _print_secret(secret)


@app.command("rotate-secret")
def rotate_secret(
    client_id: ClientId, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Replace a client's secret; the new one is printed once and the old one stops working."""
    settings = settings_from(data_dir, config)

    async def work(registry: ClientRegistry) -> str:
        return await registry.rotate_secret(client_id, actor=actor())

    secret = _with_registry(settings, work)
    if as_json:
        emit_json({"client_id": client_id, "client_secret": secret})
        return
    typer.echo(f"{'client_id:':<37} {client_id}")
    _print_secret(secret)
    typer.echo("the old secret no longer works (running servers: within 5 seconds)")


@app.command("remove")
def remove(client_id: ClientId, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Delete a client and the consents users gave it."""
    settings = settings_from(data_dir, config)

    async def work(registry: ClientRegistry) -> None:
        await registry.remove(client_id, actor=actor())

    _with_registry(settings, work)
    typer.echo(f"removed client {client_id}")


def _set_disabled(client_id: str, disabled: bool, data_dir: Path | None, config: Path | None) -> None:
    settings = settings_from(data_dir, config)

    async def work(registry: ClientRegistry) -> RegisteredClient:
        if disabled:
            return await registry.disable(client_id, actor=actor())
        return await registry.enable(client_id, actor=actor())

    _with_registry(settings, work)
    typer.echo(f"{'disabled' if disabled else 'enabled'} client {client_id}")


@app.command("disable")
def disable(client_id: ClientId, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Refuse a client everywhere (sign-in, tokens) until it is enabled again."""
    _set_disabled(client_id, True, data_dir, config)


@app.command("enable")
def enable(client_id: ClientId, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Accept a disabled client again."""
    _set_disabled(client_id, False, data_dir, config)
