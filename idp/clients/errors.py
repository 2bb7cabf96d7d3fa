"""The client registry's errors: one family, :class:`ClientError`, each a one-line message.

:class:`InvalidClientMetadata` names the registration field that breaks a rule (raised by
:func:`idp.clients.metadata.validate_metadata`); :class:`ClientNotFound` and
:class:`ClientExists` name the client id.
"""

from __future__ import annotations

__all__ = ["ClientError", "ClientExists", "ClientNotFound", "InvalidClientMetadata"]


class ClientError(Exception):
    """A client registry operation failed; the message is one line for an operator."""


class InvalidClientMetadata(ClientError):
    """Registration metadata that breaks a rule; ``field`` names it, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ClientNotFound(ClientError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"no client {client_id!r}")
        self.client_id = client_id


class ClientExists(ClientError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"a client with id {client_id!r} exists")
        self.client_id = client_id
