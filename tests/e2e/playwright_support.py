"""Playwright over Debian's Chromium for the browser tests: launch, a virtual authenticator, screenshots.

* ``launch_chromium()`` starts ``/usr/bin/chromium`` (installed by ``python -m tests.services
  prepare``; Playwright cannot download its own browser here) with the flags this machine needs:
  no sandbox (root), no GPU, and no background connections to Google's services, which the
  closed network refuses many at a time.
* ``VirtualAuthenticator`` is the DevTools virtual authenticator (CDP domain ``WebAuthn``) bound
  to one page: a platform authenticator (CTAP2, transport ``internal``) with resident keys and
  user verification, which answers ``navigator.credentials.create/get`` (WebAuthn L3 §5.1.3,
  §5.1.4) without a person touching anything. WebAuthn needs a host name as the RP id (an IP
  address is refused as an "invalid domain"), hence the IdP at ``http://idp.localhost:<port>``:
  ``*.localhost`` is a secure context and Chromium resolves it to loopback itself.
* ``Screenshots`` writes PNGs of a page under a test's temporary directory.

The tests use Playwright's *async* API: the sync API marks its event loop as running in the
main thread between calls, so every pytest-asyncio test after the first browser test would fail
with "Runner.run() cannot be called from a running event loop" (tests/e2e/conftest.py).
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, CDPSession, Page, async_playwright

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "AuthenticatorCredential",
    "Screenshots",
    "VirtualAuthenticator",
    "b64url_decode",
    "b64url_encode",
    "launch_chromium",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",  # no screen, no GPU
    # Without these three Chromium keeps dialling Google's services, and the closed network of
    # this machine refuses the connections many at a time (machine notes: python-svc).
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
)
MISSING = (
    f"{CHROMIUM} is missing: the browser tests need Debian's chromium package; "
    "run `python -m tests.services prepare` as root (make test does) or `apt-get install chromium`"
)


def launch_chromium(**options: Any) -> AbstractAsyncContextManager[Browser]:
    """``async with launch_chromium() as browser:`` a headless Debian Chromium driven by
    Playwright; closed (and Playwright stopped) on exit.

    ``options`` go to ``BrowserType.launch`` (``slow_mo``, ``headless=False`` under Xvfb, ...).
    Chromium missing is an error with the way to install it, never a skip: a suite that skips
    its browser tests on a machine without a browser would pass without testing the pages.
    """
    if not CHROMIUM.exists():
        raise RuntimeError(MISSING)
    return _launch(options)


@asynccontextmanager
async def _launch(options: Mapping[str, Any]) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), **options
        )
        try:
            yield browser
        finally:
            await browser.close()


def b64url_encode(data: bytes) -> str:
    """base64url without padding: how WebAuthn's JSON forms carry binary values (L3 §5.1.1)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class AuthenticatorCredential:
    """A credential held by the virtual authenticator (CDP ``WebAuthn.Credential``).

    ``id`` is base64url, the same text as ``PublicKeyCredential.id`` in the page; CDP itself
    speaks standard base64.
    """

    id: str
    rp_id: str
    resident: bool
    user_handle: bytes
    sign_count: int
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_cdp(cls, value: Mapping[str, Any]) -> AuthenticatorCredential:
        return cls(
            id=b64url_encode(base64.b64decode(value["credentialId"])),
            rp_id=str(value.get("rpId", "")),
            resident=bool(value["isResidentCredential"]),
            user_handle=base64.b64decode(value.get("userHandle", "")),
            sign_count=int(value["signCount"]),
            raw=dict(value),
        )


# A passkey on the device itself, with a PIN / biometric: what a civil servant's laptop or phone
# offers. Presence and verification are simulated, so a ceremony completes without a person.
DEFAULT_OPTIONS: Mapping[str, Any] = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


class VirtualAuthenticator:
    """The DevTools virtual authenticator of one page. Build it with ``await attach(page)``."""

    def __init__(self, cdp: CDPSession, authenticator_id: str) -> None:
        self.cdp = cdp
        self.authenticator_id = authenticator_id

    @classmethod
    async def attach(cls, page: Page, **options: Any) -> VirtualAuthenticator:
        """Enable the ``WebAuthn`` domain for ``page`` and add an authenticator to it.

        ``options`` override ``DEFAULT_OPTIONS`` with CDP ``VirtualAuthenticatorOptions`` names,
        e.g. ``transport="usb", hasResidentKey=False`` for a roaming security key, or
        ``defaultBackupEligibility=True`` for a synced passkey (flag BE: amr ``swk``).
        """
        cdp = await page.context.new_cdp_session(page)
        # enableUI False: no account chooser; the authenticator answers by itself.
        await cdp.send("WebAuthn.enable", {"enableUI": False})
        added = await cdp.send(
            "WebAuthn.addVirtualAuthenticator", {"options": {**DEFAULT_OPTIONS, **options}}
        )
        return cls(cdp, str(added["authenticatorId"]))

    async def credentials(self) -> list[AuthenticatorCredential]:
        """Every credential the authenticator holds (``WebAuthn.getCredentials``)."""
        found = await self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})
        return [AuthenticatorCredential.from_cdp(c) for c in found["credentials"]]

    async def remove_credential(self, credential_id: str) -> None:
        """Forget one credential (``credential_id`` in base64url, as the page sees it)."""
        await self.cdp.send(
            "WebAuthn.removeCredential",
            {
                "authenticatorId": self.authenticator_id,
                "credentialId": base64.b64encode(b64url_decode(credential_id)).decode("ascii"),
            },
        )

    async def clear_credentials(self) -> None:
        await self.cdp.send("WebAuthn.clearCredentials", {"authenticatorId": self.authenticator_id})

    async def set_user_verified(self, verified: bool) -> None:
        """Whether the next user verification (PIN / biometric) succeeds (flag UV, L3 §6.1)."""
        await self.cdp.send(
            "WebAuthn.setUserVerified", {"authenticatorId": self.authenticator_id, "isUserVerified": verified}
        )

    async def set_presence(self, automatic: bool) -> None:
        """With ``False`` nobody touches the authenticator: ceremonies time out (flag UP)."""
        await self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation",
            {"authenticatorId": self.authenticator_id, "enabled": automatic},
        )

    async def remove(self) -> None:
        """Unplug it: the page then has no authenticator at all."""
        await self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.authenticator_id})


class Screenshots:
    """PNG screenshots of pages, numbered in the order taken, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.taken: list[Path] = []

    async def take(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        """Write ``NN-<name>.png`` and return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
        path = self.directory / f"{len(self.taken) + 1:02d}-{safe}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        self.taken.append(path)
        return path
