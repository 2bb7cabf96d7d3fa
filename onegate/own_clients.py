"""OIDC clients that are part of this deployment (the gateway, the demo's OA): registered at the
built-in IdP at start-up, kept in step with the configuration, their secret derived from a
keyvault secret so that every process of the deployment knows it and it is never written down."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from idp.clients.services import ClientRegistry
from onegate.runtime import Runtime

__all__ = ["ensure_own_client", "keyvault_secret"]


def keyvault_secret(runtime: Runtime, name: str) -> str:
    """A client secret derived from the keyvault secret ``name`` (created on first use)."""
    return base64.urlsafe_b64encode(runtime.vault.secrets.get_or_create(name)).rstrip(b"=").decode()


def _same(current: Any, wanted: Any) -> bool:
    if isinstance(wanted, list | tuple):
        return tuple(current or ()) == tuple(wanted)
    return bool(current == wanted)


async def ensure_own_client(
    registry: ClientRegistry,
    client_id: str,
    *,
    secret: str,
    actor: str,
    create: Mapping[str, Any],
    keep: Mapping[str, Any],
) -> None:
    """Register ``client_id`` with ``create`` and ``keep`` if it is missing; otherwise update the
    fields of ``keep`` that differ, and set ``secret`` again if it no longer verifies."""
    client = await registry.get(client_id, include_disabled=True)
    if client is None:
        await registry.add(client_id=client_id, actor=actor, **create, **keep)
        await registry.rotate_secret(client_id, secret=secret, actor=actor)
        return
    changed = {name: value for name, value in keep.items() if not _same(getattr(client, name), value)}
    if changed:
        await registry.update(client_id, actor=actor, **changed)
    if not registry.verify_secret(client, secret):
        await registry.rotate_secret(client_id, secret=secret, actor=actor)
