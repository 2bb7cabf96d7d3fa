"""The JSON side of the pages: the WebAuthn ceremonies' ``fetch`` endpoints.

Every answer is JSON, whatever the ``Accept`` header: ``{"ok": true, ...}`` on success, else
``{"ok": false, "error": <reason>, "reason": <reason>, "message": <text in the page's locale>}``
with a 4xx status. The reason is a closed vocabulary (:class:`ApiReason`, or a
``mfa.webauthn.WebAuthnReason``), so the page's script can show ``message`` as it is: it was
translated here, server-side. Bodies are read with a size limit and anything that is not a JSON
object is a ``bad_request`` answer, never a 500.

The ceremony id of a WebAuthn ceremony never reaches the script: it travels in the HttpOnly
cookie ``onegate_webauthn`` (``__Host-`` on https) for the ceremony's lifetime, so a ceremony
can only be finished by the browser that began it; the WebAuthn service binds it to the user
as well (or to "discoverable" for a passkey sign-in without a username).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.web import N_

__all__ = [
    "MAX_JSON_BYTES",
    "ApiReason",
    "CeremonyAnswer",
    "CeremonyCookie",
    "json_failure",
    "json_success",
    "read_json",
    "translate",
]

MAX_JSON_BYTES = 64 * 1024  # a PublicKeyCredential with attestation is a few KiB
_CEREMONY_COOKIE = "onegate_webauthn"
_CEREMONY_ID_MAX = 128


class ApiReason(StrEnum):
    """Why a JSON request was refused before (or besides) the WebAuthn service's own reasons."""

    BAD_REQUEST = "bad_request"
    SIGN_IN_EXPIRED = "sign_in_expired"  # no sign-in transaction or session to act for
    STEP_UP_REQUIRED = "step_up_required"  # the session must first prove a second factor
    NOT_OFFERED = "not_offered"  # this method is not one the page may use now
    THROTTLED = "throttled"
    LOCKED = "locked"
    REFUSED = "refused"  # a passkey sign-in of an account that cannot sign in
    NO_USER_VERIFICATION = "no_user_verification"
    # The WebAuthn service's reasons (mfa.webauthn.WebAuthnReason), same values.
    INVALID = "invalid"
    CHALLENGE = "challenge"
    ORIGIN = "origin"
    RP_ID = "rp_id"
    USER_VERIFICATION = "user_verification"
    UNKNOWN_CREDENTIAL = "unknown_credential"
    COUNTER = "counter"
    DUPLICATE = "duplicate"
    AUTHENTICATOR_NOT_ALLOWED = "authenticator_not_allowed"


_MESSAGES: dict[ApiReason, str] = {
    ApiReason.BAD_REQUEST: N_("The request could not be understood. Reload the page and try again."),
    ApiReason.SIGN_IN_EXPIRED: N_("The sign-in has expired. Please sign in again."),
    ApiReason.STEP_UP_REQUIRED: N_("Confirm it is you with your second factor first."),
    ApiReason.NOT_OFFERED: N_("This sign-in method cannot be used here."),
    ApiReason.THROTTLED: N_("Too many attempts. Wait a few minutes and try again."),
    ApiReason.LOCKED: N_(
        "Too many failed attempts: the account is locked for a while. Try again later or contact "
        "the service desk."
    ),
    ApiReason.REFUSED: N_(
        "Sign-in failed. The account may be unable to sign in for now. Contact the service desk if "
        "this persists."
    ),
    ApiReason.NO_USER_VERIFICATION: N_(
        "Signing in without a password needs your device to verify you (PIN, fingerprint or face). "
        "Use a passkey that can, or sign in with your password."
    ),
    ApiReason.INVALID: N_("The passkey's answer could not be verified. Please try again."),
    ApiReason.CHALLENGE: N_("The request has expired or was already used. Please try again."),
    ApiReason.ORIGIN: N_("This passkey request did not come from this site and was refused."),
    ApiReason.RP_ID: N_("This passkey belongs to another site and cannot be used here."),
    ApiReason.USER_VERIFICATION: N_(
        "Your security key did not verify you (PIN, fingerprint or face). Please try again."
    ),
    ApiReason.UNKNOWN_CREDENTIAL: N_(
        "This passkey is not registered for your account. Use another one, or sign in with your password."
    ),
    ApiReason.COUNTER: N_(
        "This security key was refused because it may have been copied. Contact the service desk."
    ),
    ApiReason.DUPLICATE: N_("This passkey or security key is already registered."),
    ApiReason.AUTHENTICATOR_NOT_ALLOWED: N_(
        "This kind of security key is not allowed here. Use one approved by your organisation."
    ),
}


def translate(request: Request, message: str) -> str:
    """``message`` (an English message id) in the request's locale."""
    locale = request.app.state.templates.locale_of(request)
    result: str = request.app.state.catalogs.gettext(locale, message)
    return result


def json_success(payload: dict[str, Any] | None = None, *, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"ok": True, **(payload or {})}, status_code=status_code)


def json_failure(
    request: Request,
    reason: ApiReason | str,
    *,
    status_code: int = 400,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A refusal with its reason and the reason's message in the request's locale."""
    try:
        known = ApiReason(reason)
    except ValueError:  # a reason of the WebAuthn service this page does not know yet
        known = ApiReason.INVALID
    body = {
        "ok": False,
        "error": known.value,
        "reason": known.value,
        "message": translate(request, _MESSAGES[known]),
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


async def read_json(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, or None: not ``application/json``, larger than
    :data:`MAX_JSON_BYTES`, not JSON, or not an object."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return None
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class CeremonyAnswer:
    """The browser's answer to a WebAuthn ceremony: the ceremony it answers (from the cookie), its
    ``PublicKeyCredential`` JSON, and the whole body (a registration also carries ``name``)."""

    ceremony_id: str
    credential: dict[str, Any]
    body: dict[str, Any]


class CeremonyCookie:
    """The HttpOnly cookie that carries a WebAuthn ceremony id from options to verify."""

    def __init__(self, *, https: bool, ttl: float) -> None:
        self._https = https
        self._ttl = ttl

    @property
    def name(self) -> str:
        return f"__Host-{_CEREMONY_COOKIE}" if self._https else _CEREMONY_COOKIE

    def set(self, response: Response, ceremony_id: str) -> None:
        response.set_cookie(
            self.name,
            ceremony_id,
            max_age=math.ceil(self._ttl),
            path="/",
            secure=self._https,
            httponly=True,
            samesite="strict",  # only ever used by our own fetch calls
        )

    def read(self, request: Request) -> str | None:
        value = request.cookies.get(self.name, "")
        return value if 0 < len(value) <= _CEREMONY_ID_MAX else None

    async def answer(self, request: Request) -> CeremonyAnswer | Response:
        """The answer posted to a ``/verify`` endpoint, or the JSON refusal to send: ``bad_request``
        without a ``credential`` object, ``challenge`` without a ceremony cookie."""
        body = await read_json(request)
        credential = body.get("credential") if body is not None else None
        if body is None or not isinstance(credential, dict):
            return json_failure(request, ApiReason.BAD_REQUEST)
        ceremony_id = self.read(request)
        if ceremony_id is None:
            return json_failure(request, ApiReason.CHALLENGE)
        return CeremonyAnswer(ceremony_id, credential, body)

    def clear(self, response: Response) -> None:
        response.delete_cookie(self.name, path="/", secure=self._https, httponly=True, samesite="strict")
