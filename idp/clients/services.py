"""The client registry: validated registration, keyed-hash secrets, a short in-process cache.

Every registration or change is validated as a whole by one function
(:func:`~idp.clients.metadata.validate_metadata`, in metadata.py with the rules and the specs
they come from), so ``add`` and ``update`` cannot drift apart, and a problem raises
:class:`~idp.clients.errors.InvalidClientMetadata` naming the field. Clients are handed out
as :class:`~idp.clients.records.RegisteredClient` snapshots.

Client secrets are 256-bit random strings shown once. Only an HMAC-SHA256 of them is stored,
keyed with the service secret ``client-secret-key`` (DESIGN.md: argon2 is for low-entropy
secrets; an argon2 verify per token request would cap client-credential grants near 10/s).

``get`` is called on every token request, so parsed clients (public keys loaded once) are
cached in this process for ``cache_ttl`` seconds (default 5). Changes made through this
registry invalidate its cache at once; a change made by another process (the CLI, another
server) is seen within ``cache_ttl`` seconds. Share one registry per process.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Event, EventEmitter, Outcome
from idp.clients.errors import ClientError, ClientExists, ClientNotFound, InvalidClientMetadata
from idp.clients.metadata import (
    ASSERTION_ALGORITHMS,
    DEFAULT_GRANT_TYPES,
    DEFAULT_SCOPES,
    GRANT_TYPES,
    STANDARD_SCOPES,
    ClientKey,
    ClientMetadata,
    _enum_value,
    check_url,
    is_valid_client_id,
    parse_jwks,
    validate_metadata,
)
from idp.clients.models import AuthMethod, Client, ClientType
from idp.clients.records import RegisteredClient
from keyvault import SecretStore

__all__ = [
    "ASSERTION_ALGORITHMS",
    "CLIENT_SECRET_KEY_NAME",
    "DEFAULT_GRANT_TYPES",
    "DEFAULT_SCOPES",
    "GRANT_TYPES",
    "STANDARD_SCOPES",
    "UNSET",
    "ClientError",
    "ClientExists",
    "ClientKey",
    "ClientMetadata",
    "ClientNotFound",
    "ClientRegistry",
    "InvalidClientMetadata",
    "RegisteredClient",
    "Unset",
    "check_url",
    "is_valid_client_id",
    "parse_jwks",
    "validate_metadata",
]

CLIENT_SECRET_KEY_NAME: Final = "client-secret-key"  # noqa: S105 - the name of a key, not a key
_SECRET_METHODS: Final = frozenset({AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST})


class Unset:
    """The type of :data:`UNSET`: "leave this field as it is" in :meth:`ClientRegistry.update`."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()


def _metadata_of(row: Client) -> ClientMetadata:
    return ClientMetadata(
        name=row.name,
        client_type=ClientType(row.client_type),
        name_en=row.name_en,
        token_endpoint_auth_method=AuthMethod(row.token_endpoint_auth_method),
        redirect_uris=tuple(row.redirect_uris or ()),
        post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
        grant_types=tuple(row.grant_types or ()),
        scopes=tuple(row.scopes or ()),
        first_party=row.first_party,
        require_pkce=row.require_pkce,
        minimum_acr=row.minimum_acr,
        id_token_lifetime=row.id_token_lifetime,
        access_token_lifetime=row.access_token_lifetime,
        refresh_token_lifetime=row.refresh_token_lifetime,
        backchannel_logout_uri=row.backchannel_logout_uri,
        backchannel_logout_session_required=row.backchannel_logout_session_required,
        jwks=row.jwks,
        jwks_uri=row.jwks_uri,
        description=row.description,
    )


_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(ClientMetadata) if f.name != "client_type")


def _write(row: Client, m: ClientMetadata) -> list[str]:
    """Copy validated metadata onto the row; the names of the columns that changed."""
    changed = []
    for name in _COLUMNS:
        value = getattr(m, name)
        if isinstance(value, tuple):
            value = list(value)
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed.append(name)
    return changed


# -- the registry ---------------------------------------------------------------------------------


class ClientRegistry:
    """OIDC clients in the SQL database. Every method runs in a transaction of its own."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        secrets_store: SecretStore,
        *,
        events: EventEmitter | None = None,
        cache_ttl: float = 5.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._sessions = sessions
        self._secrets_store = secrets_store
        self._events = events
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._clock = clock
        self._token_urlsafe = token_urlsafe
        self._cache: OrderedDict[str, tuple[float, RegisteredClient | None]] = OrderedDict()
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return f"ClientRegistry(cache_ttl={self._cache_ttl}, cached={len(self._cache)})"

    # -- secrets (keyed SHA-256; see the module docstring) -------------------------------------------

    def _mac(self, client_id: str, secret: str) -> str:
        if self._key is None:
            self._key = self._secrets_store.get_or_create(CLIENT_SECRET_KEY_NAME)
        # Binding the client id (which cannot contain NUL) means a hash copied onto another
        # client's row does not make that client accept the first one's secret.
        message = b"onegate client secret v1\x00" + client_id.encode() + b"\x00"
        message += secret.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _new_secret(self, client_id: str) -> tuple[str, str]:
        secret = self._token_urlsafe(32)  # 256 bits
        return secret, self._mac(client_id, secret)

    def verify_secret(self, client: RegisteredClient | None, presented: str | None) -> bool:
        """True when ``presented`` is ``client``'s current secret; constant time.

        An unknown client, a client without a secret and an empty secret cost the same HMAC
        and comparison as a real check, so timing does not tell which of them it was.
        """
        real = client is not None and client.secret_hash is not None and bool(presented)
        client_id = client.client_id if client is not None else ""
        expected = client.secret_hash if client is not None and client.secret_hash else "0" * 64
        actual = self._mac(client_id, presented or "")
        return hmac.compare_digest(actual.encode(), expected.encode()) and real

    # -- reading -----------------------------------------------------------------------------------

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one cached client (or all); the next ``get`` reads the database."""
        if client_id is None:
            self._cache.clear()
        else:
            self._cache.pop(client_id, None)

    async def get(self, client_id: str, *, include_disabled: bool = False) -> RegisteredClient | None:
        """The client, or None; disabled clients only with ``include_disabled`` (fail closed).

        Served from a per-process cache for up to ``cache_ttl`` seconds (unknown ids too, so
        a flood of made-up ids does not reach the database each time).
        """
        if not is_valid_client_id(client_id):
            return None
        now = self._clock()
        cached = self._cache.get(client_id)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(client_id)
            client = cached[1]
        else:
            async with self._sessions() as s:
                row = await self._row(s, client_id)
                client = RegisteredClient.from_row(row) if row is not None else None
            self._cache[client_id] = (now + self._cache_ttl, client)
            self._cache.move_to_end(client_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if client is not None and client.disabled and not include_disabled:
            return None
        return client

    async def require(self, client_id: str) -> RegisteredClient:
        """The client, disabled or not, read afresh; :class:`ClientNotFound` if there is none."""
        self.invalidate(client_id)
        client = await self.get(client_id, include_disabled=True)
        if client is None:
            raise ClientNotFound(client_id)
        return client

    async def list(self) -> builtins.list[RegisteredClient]:
        """Every client, disabled ones too, by client_id."""
        async with self._sessions() as s:
            rows = (await s.execute(select(Client).order_by(Client.client_id))).scalars().all()
            return [RegisteredClient.from_row(row) for row in rows]

    @staticmethod
    async def _row(session: Any, client_id: str, *, lock: bool = False) -> Client | None:
        """The client's row; with ``lock``, locked for this transaction before it is read: a
        write that changes nothing takes the row's lock on PostgreSQL and the database's write
        lock on SQLite (whose driver starts a transaction only at the first write, so a
        ``SELECT ... FOR UPDATE``, which SQLite ignores, would leave the read unprotected)."""
        if lock:
            await session.execute(
                update(Client).where(Client.client_id == client_id).values(client_id=Client.client_id)
            )
        row: Client | None = (
            await session.execute(select(Client).where(Client.client_id == client_id))
        ).scalar_one_or_none()
        return row

    # -- changing ----------------------------------------------------------------------------------

    async def add(
        self,
        *,
        name: str,
        client_type: ClientType | str = ClientType.CONFIDENTIAL,
        client_id: str | None = None,
        name_en: str | None = None,
        token_endpoint_auth_method: AuthMethod | str | None = None,
        redirect_uris: Iterable[str] = (),
        post_logout_redirect_uris: Iterable[str] = (),
        grant_types: Iterable[str] = DEFAULT_GRANT_TYPES,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        first_party: bool = False,
        require_pkce: bool = True,
        minimum_acr: str | None = None,
        id_token_lifetime: int | None = None,
        access_token_lifetime: int | None = None,
        refresh_token_lifetime: int | None = None,
        backchannel_logout_uri: str | None = None,
        backchannel_logout_session_required: bool = True,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        description: str | None = None,
        actor: str | None = None,
    ) -> tuple[RegisteredClient, str | None]:
        """Register a client; returns it and its secret (None unless it uses one). Show the secret once."""
        if client_id is None:
            client_id = self._token_urlsafe(16)
        if not is_valid_client_id(client_id):
            raise InvalidClientMetadata("client_id", "3 to 128 characters of A-Z a-z 0-9 . _ -")
        metadata = validate_metadata(
            ClientMetadata(
                name=name,
                client_type=_enum_value("client_type", ClientType, client_type),
                name_en=name_en,
                token_endpoint_auth_method=(
                    None
                    if token_endpoint_auth_method is None
                    else _enum_value("token_endpoint_auth_method", AuthMethod, token_endpoint_auth_method)
                ),
                redirect_uris=tuple(_strings("redirect_uris", redirect_uris)),
                post_logout_redirect_uris=tuple(
                    _strings("post_logout_redirect_uris", post_logout_redirect_uris)
                ),
                grant_types=tuple(_strings("grant_types", grant_types)),
                scopes=tuple(_strings("scopes", scopes)),
                first_party=first_party,
                require_pkce=require_pkce,
                minimum_acr=minimum_acr,
                id_token_lifetime=id_token_lifetime,
                access_token_lifetime=access_token_lifetime,
                refresh_token_lifetime=refresh_token_lifetime,
                backchannel_logout_uri=backchannel_logout_uri,
                backchannel_logout_session_required=backchannel_logout_session_required,
                jwks=jwks,
                jwks_uri=jwks_uri,
                description=description,
            )
        )
        secret: str | None = None
        row = Client(client_id=client_id, client_type=metadata.client_type)
        _write(row, metadata)
        if metadata.token_endpoint_auth_method in _SECRET_METHODS:
            secret, row.secret_hash = self._new_secret(client_id)
            row.secret_rotated_at = datetime.now(UTC)
        try:
            async with self._sessions() as s, s.begin():
                if await self._row(s, client_id) is not None:
                    raise ClientExists(client_id)
                s.add(row)
        except IntegrityError as e:  # a concurrent add of the same id
            raise ClientExists(client_id) from e
        self.invalidate(client_id)
        client = RegisteredClient.from_row(row)
        self._emit("client-created", client_id, actor, ["creation"], client_type=client.client_type.value)
        return client, secret

    async def update(
        self,
        client_id: str,
        *,
        name: str | Unset = UNSET,
        name_en: str | Unset | None = UNSET,
        token_endpoint_auth_method: AuthMethod | str | Unset = UNSET,
        redirect_uris: Iterable[str] | Unset = UNSET,
        post_logout_redirect_uris: Iterable[str] | Unset = UNSET,
        grant_types: Iterable[str] | Unset = UNSET,
        scopes: Iterable[str] | Unset = UNSET,
        first_party: bool | Unset = UNSET,
        require_pkce: bool | Unset = UNSET,
        minimum_acr: str | Unset | None = UNSET,
        id_token_lifetime: int | Unset | None = UNSET,
        access_token_lifetime: int | Unset | None = UNSET,
        refresh_token_lifetime: int | Unset | None = UNSET,
        backchannel_logout_uri: str | Unset | None = UNSET,
        backchannel_logout_session_required: bool | Unset = UNSET,
        jwks: Mapping[str, Any] | Unset | None = UNSET,
        jwks_uri: str | Unset | None = UNSET,
        description: str | Unset | None = UNSET,
        actor: str | None = None,
    ) -> tuple[RegisteredClient, str | None]:
        """Change the given fields (``UNSET`` ones stay); the result is validated as a whole.

        ``client_id`` and ``client_type`` cannot change. Switching a confidential client to a
        secret method when it has no secret creates one (returned, shown once); switching away
        from secrets deletes the stored hash, and away from private_key_jwt its keys.
        """
        given: dict[str, Any] = {
            key: value
            for key, value in {
                "name": name,
                "name_en": name_en,
                "token_endpoint_auth_method": token_endpoint_auth_method,
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "grant_types": grant_types,
                "scopes": scopes,
                "first_party": first_party,
                "require_pkce": require_pkce,
                "minimum_acr": minimum_acr,
                "id_token_lifetime": id_token_lifetime,
                "access_token_lifetime": access_token_lifetime,
                "refresh_token_lifetime": refresh_token_lifetime,
                "backchannel_logout_uri": backchannel_logout_uri,
                "backchannel_logout_session_required": backchannel_logout_session_required,
                "jwks": jwks,
                "jwks_uri": jwks_uri,
                "description": description,
            }.items()
            if value is not UNSET
        }
        for key in ("redirect_uris", "post_logout_redirect_uris", "grant_types", "scopes"):
            if key in given:
                given[key] = tuple(_strings(key, given[key]))
        if "token_endpoint_auth_method" in given:
            given["token_endpoint_auth_method"] = _enum_value(
                "token_endpoint_auth_method", AuthMethod, given["token_endpoint_auth_method"]
            )
            # Leaving private_key_jwt drops its keys unless the caller says otherwise.
            if given["token_endpoint_auth_method"] is not AuthMethod.PRIVATE_KEY_JWT:
                given.setdefault("jwks", None)
                given.setdefault("jwks_uri", None)
        return await self._change(client_id, lambda current: dataclasses.replace(current, **given), actor)

    async def merge_redirect_uris(
        self,
        client_id: str,
        merge: Callable[[tuple[str, ...]], Iterable[str]],
        *,
        actor: str | None = None,
    ) -> RegisteredClient:
        """Set the redirect URIs to ``merge(current ones)``, read and written in one transaction
        with the client's row locked, so that processes that each keep their own callbacks in
        one registration (the gateway's) never write over one another's."""

        def merged(current: ClientMetadata) -> ClientMetadata:
            uris = tuple(_strings("redirect_uris", merge(current.redirect_uris)))
            return dataclasses.replace(current, redirect_uris=uris)

        client, _ = await self._change(client_id, merged, actor, lock=True)
        return client

    async def _change(
        self,
        client_id: str,
        change: Callable[[ClientMetadata], ClientMetadata],
        actor: str | None,
        *,
        lock: bool = False,
    ) -> tuple[RegisteredClient, str | None]:
        """Apply ``change`` to the client's metadata in one transaction (``lock``: the row locked
        from the read on, where the database can); see :meth:`update` for secrets."""
        secret: str | None = None
        async with self._sessions() as s, s.begin():
            row = await self._row(s, client_id, lock=lock)
            if row is None:
                raise ClientNotFound(client_id)
            metadata = validate_metadata(change(_metadata_of(row)))
            changed = _write(row, metadata)
            if metadata.token_endpoint_auth_method in _SECRET_METHODS:
                if row.secret_hash is None:
                    secret, row.secret_hash = self._new_secret(client_id)
                    row.secret_rotated_at = datetime.now(UTC)
                    changed.append("secret")
            elif row.secret_hash is not None:
                row.secret_hash = None
                row.secret_rotated_at = None
                changed.append("secret")
            if changed:
                row.updated_at = datetime.now(UTC)
        self.invalidate(client_id)
        if changed:
            self._emit("client-updated", client_id, actor, ["change"], changed=changed)
        return RegisteredClient.from_row(row), secret

    async def rotate_secret(
        self, client_id: str, *, actor: str | None = None, secret: str | None = None
    ) -> str:
        """A new secret (show it once); the old one stops working at once, without a grace period.

        "At once" holds in this process; other processes notice within ``cache_ttl`` seconds.
        ``secret``: set this one instead of generating it — for a client that is part of this
        deployment (the gateway) and keeps its secret in keyvault; at least 32 characters.
        """
        if secret is not None and len(secret) < 32:
            raise ClientError("a client secret set by its owner has at least 32 characters")
        async with self._sessions() as s, s.begin():
            row = await self._row(s, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            if AuthMethod(row.token_endpoint_auth_method) not in _SECRET_METHODS:
                raise ClientError(
                    f"client {client_id!r} authenticates with {row.token_endpoint_auth_method.value}, "
                    "not a secret"
                )
            if secret is None:
                secret, row.secret_hash = self._new_secret(client_id)
            else:
                row.secret_hash = self._mac(client_id, secret)
            row.secret_rotated_at = row.updated_at = datetime.now(UTC)
        self.invalidate(client_id)
        self._emit("client-secret-rotated", client_id, actor, ["change"])
        return secret

    async def remove(self, client_id: str, *, actor: str | None = None) -> None:
        """Delete the client and (by cascade) the consents given to it."""
        async with self._sessions() as s, s.begin():
            result = await s.execute(delete(Client).where(Client.client_id == client_id))
            if not getattr(result, "rowcount", 0):
                raise ClientNotFound(client_id)
        self.invalidate(client_id)
        self._emit("client-removed", client_id, actor, ["deletion"])

    async def disable(self, client_id: str, *, actor: str | None = None) -> RegisteredClient:
        """Refuse the client everywhere (authorize, token, ...) until enabled again."""
        return await self._set_disabled(client_id, True, actor)

    async def enable(self, client_id: str, *, actor: str | None = None) -> RegisteredClient:
        return await self._set_disabled(client_id, False, actor)

    async def _set_disabled(self, client_id: str, disabled: bool, actor: str | None) -> RegisteredClient:
        async with self._sessions() as s, s.begin():
            row = await self._row(s, client_id)
            if row is None:
                raise ClientNotFound(client_id)
            changed = row.disabled != disabled
            if changed:
                row.disabled = disabled
                row.updated_at = datetime.now(UTC)
        self.invalidate(client_id)
        if changed:
            self._emit("client-updated", client_id, actor, ["change"], changed=["disabled"])
        return RegisteredClient.from_row(row)

    def _emit(
        self,
        action: str,
        client_id: str,
        actor: str | None,
        types: builtins.list[str],
        *,
        changed: builtins.list[str] | None = None,
        client_type: str | None = None,
    ) -> None:
        if self._events is None:
            return
        fields: dict[str, Any] = {"event.type": types, "onegate.client_id": client_id}
        if actor:
            fields["labels.actor"] = actor
        if changed:
            fields["onegate.changed"] = sorted(changed)
        if client_type:
            fields["onegate.client_type"] = client_type
        self._events.emit(
            Event(
                action=action,
                category=Category.CONFIGURATION,
                outcome=Outcome.SUCCESS,
                dataset="onegate.idp",
                fields=fields,
            )
        )


def _strings(field: str, values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidClientMetadata(field, "must be a list of strings")
    out = list(values)
    if not all(isinstance(v, str) for v in out):
        raise InvalidClientMetadata(field, "must be a list of strings")
    return out
