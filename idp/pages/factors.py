"""What the enrolment page (``/mfa/setup``) and the security page (``/account/security``) share:
the authenticator-app setup page (QR code and manual key, RFC 6238 via ``mfa.totp``), the
passkey registration ceremony (WebAuthn L3 §7.1 "Registering a New Credential", done by
``mfa.webauthn``), the one-time display of recovery codes, and factor references in forms.

A new authenticator app is only bound after a correct code (``TotpService.confirm_enrolment``);
a wrong one leaves the enrolment pending, and the page then asks for the code again without
showing the key a second time (the service does not hand a pending seed back out, on purpose).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from core.web import N_
from idp.context import IdpContext
from idp.directory.models import User
from idp.pages import render
from idp.pages.api import ApiReason, CeremonyCookie, json_failure, json_success, translate
from idp.pages.qr import qr_data_uri
from mfa.webauthn import RegistrationResult

__all__ = [
    "DEFAULT_PASSKEY_NAME",
    "DEFAULT_TOTP_NAME",
    "FactorRef",
    "clean_name",
    "finish_registration",
    "new_recovery_codes",
    "recovery_codes_page",
    "registration_options",
    "totp_failure_page",
    "totp_page",
]

DEFAULT_TOTP_NAME = N_("Authenticator app")
DEFAULT_PASSKEY_NAME = N_("Passkey")
TOTP_WRONG = N_(
    "The code is not correct. Enter the 6-digit code your authenticator app shows now, and check "
    "that your phone's clock is right."
)
TOTP_EXPIRED = N_("The setup has expired. Start again to get a new QR code.")
_NAME_MAX = 64


def clean_name(request: Request, raw: object, default: str) -> str:
    """A factor's label as the user typed it, without control characters, at most 64 characters;
    ``default`` (a message id, translated) when empty."""
    text = raw if isinstance(raw, str) else ""
    cleaned = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()[:_NAME_MAX]
    return cleaned or translate(request, default)


@dataclass(frozen=True)
class FactorRef:
    """A factor named in a form: ``totp:<id>`` or ``webauthn:<id>`` (the ``data-factor-id`` value)."""

    kind: str
    id: int

    @classmethod
    def parse(cls, value: str) -> FactorRef | None:
        kind, _, number = value.partition(":")
        if kind not in ("totp", "webauthn") or not number.isdigit() or len(number) > 18:
            return None
        return cls(kind, int(number))

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def totp_page(
    request: Request,
    *,
    uri: str | None,
    secret: str | None,
    action: str,
    restart_url: str,
    cancel_url: str,
    name: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The authenticator-app setup page: QR code + manual key (``uri``/``secret``; None on a
    retry) and the confirmation form."""
    context: dict[str, Any] = {
        "qr": qr_data_uri(uri) if uri else None,
        "uri": uri,
        "secret": secret,
        "action": action,
        "restart_url": restart_url,
        "cancel_url": cancel_url,
        "name": name,
        "error": error,
    }
    return render(request, "totp_setup.html", context, status_code=status_code)


async def totp_failure_page(
    ctx: IdpContext,
    request: Request,
    user: User,
    *,
    action: str,
    restart_url: str,
    cancel_url: str,
    name: str,
) -> Response:
    """A confirmation that failed: the code again, or start over when the enrolment expired."""
    pending = await ctx.mfa.totp.has_pending_enrolment(user.id)
    return totp_page(
        request,
        uri=None,
        secret=None,
        action=action,
        restart_url=restart_url,
        cancel_url=cancel_url,
        name=name,
        error=TOTP_WRONG if pending else TOTP_EXPIRED,
        status_code=400,
    )


async def new_recovery_codes(ctx: IdpContext, user_id: int) -> list[str] | None:
    """A first set of recovery codes when the user has none left (None: they still have some)."""
    if await ctx.mfa.recovery.remaining(user_id) > 0:
        return None
    return await ctx.mfa.recovery.generate(user_id)


def recovery_codes_page(
    request: Request,
    *,
    codes: list[str] | None,
    remaining: int,
    continue_url: str,
    added: str | None = None,
) -> Response:
    """The codes, shown this once (``codes`` None: none new; ``remaining`` are still unused)."""
    context = {"codes": codes, "remaining": remaining, "continue_url": continue_url, "added": added}
    return render(request, "recovery_codes.html", context)


async def registration_options(
    ctx: IdpContext, request: Request, user: User, ceremonies: CeremonyCookie
) -> Response:
    """Begin registering a passkey for ``user``: the ``publicKey`` options, the ceremony id in
    the HttpOnly cookie."""
    ceremony = await ctx.mfa.webauthn.begin_registration(
        user.id, username=user.username, display_name=user.display_name
    )
    response = json_success({"publicKey": ceremony.options})
    ceremonies.set(response, ceremony.id)
    return response


async def finish_registration(
    ctx: IdpContext, request: Request, user: User, ceremonies: CeremonyCookie
) -> RegistrationResult | Response:
    """Check the browser's answer (``{"credential": ..., "name": ...}``): the result, or the JSON
    refusal to send as it is."""
    answer = await ceremonies.answer(request)
    if isinstance(answer, Response):
        return answer
    name = clean_name(request, answer.body.get("name"), DEFAULT_PASSKEY_NAME)
    result = await ctx.mfa.webauthn.finish_registration(
        user.id, answer.ceremony_id, answer.credential, name=name
    )
    if not result.ok:
        refusal = json_failure(request, result.reason or ApiReason.INVALID)
        ceremonies.clear(refusal)
        return refusal
    return result
