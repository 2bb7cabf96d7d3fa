"""A small OpenID Connect relying party for the browser tests, against a real IdP over real HTTP.

* ``CallbackReceiver`` — the RP's own web server on 127.0.0.1 (a thread): the browser is sent
  back to it with ``code``, ``state`` and ``iss`` (OIDC Core §3.1.2.5, RFC 9207), and it records
  each request it got, so a test can tell that the RP really received the redirect.
* ``RelyingParty`` — one registered client: builds the authorization request (``state``,
  ``nonce``, PKCE ``S256``, RFC 7636 §4.2), checks the authorization response, exchanges the code
  at the token endpoint (client_secret_basic, OIDC Core §3.1.3) and validates the ID token as
  §3.1.3.7 says: signature against the JWKS (``joserfc``, a library the IdP does not use for its
  own tokens), ``iss``, ``aud``, ``exp``, ``nonce`` and ``at_hash``. The result is the verified
  claims, e.g. ``acr``, ``amr`` (RFC 8176), ``auth_time`` and ``sid``.

Python cannot resolve ``idp.localhost``; the IdP's own ``http()`` session sends its requests to
127.0.0.1 with that Host header, so discovery, token and JWKS requests go over real HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet

from tests.e2e.conftest import IdpServer

__all__ = ["AuthorizationRequest", "CallbackReceiver", "RelyingParty", "SignIn"]


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_GET(self) -> None:
        self.server.received.append(self.path)
        body = "<!doctype html><html lang='zh-CN'><title>RP</title><p>已返回应用 / back at the app</p>"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest's output clean


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[str] = []


class CallbackReceiver:
    """The relying party's web server: ``with CallbackReceiver() as rp: rp.url("/cb")``."""

    def __init__(self) -> None:
        self._server = _RecordingServer()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def received(self) -> list[str]:
        """The paths with query of every request received, in order."""
        return list(self._server.received)

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the RP keeps between sending the browser out and getting it back."""

    url: str
    state: str
    nonce: str
    verifier: str


@dataclass(frozen=True)
class SignIn:
    """A completed sign-in at the RP: the verified ID token claims and the token response."""

    claims: Mapping[str, Any]
    tokens: Mapping[str, Any]

    @property
    def acr(self) -> str:
        return str(self.claims["acr"])

    @property
    def amr(self) -> list[str]:
        return [str(value) for value in self.claims["amr"]]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class RelyingParty:
    """One client of ``idp`` (``client_id`` / ``client_secret`` from ``IdpServer.add_client``)."""

    def __init__(
        self, idp: IdpServer, receiver: CallbackReceiver, client: Mapping[str, Any], redirect_uri: str
    ) -> None:
        self.idp = idp
        self.receiver = receiver
        self.client_id = str(client["client_id"])
        self._secret = str(client["client_secret"])
        self.redirect_uri = redirect_uri
        self._http = idp.http()
        found = self._http.get(idp.url("/.well-known/openid-configuration"), timeout=10)
        assert found.status_code == 200, found.text
        self.provider: dict[str, Any] = found.json()
        assert self.provider["issuer"] == idp.issuer
        jwks = self._http.get(self.provider["jwks_uri"], timeout=10)
        assert jwks.status_code == 200, jwks.text
        self._keys = KeySet.import_key_set(jwks.json())
        self._algorithms = list(self.provider["id_token_signing_alg_values_supported"])

    def close(self) -> None:
        self._http.close()

    def authorization(self, **extra: str) -> AuthorizationRequest:
        """An authorization request (code flow, PKCE S256); ``extra`` e.g. ``acr_values=...``."""
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        verifier = secrets.token_urlsafe(48)
        challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        url = f"{self.provider['authorization_endpoint']}?{urlencode(query)}"
        return AuthorizationRequest(url=url, state=state, nonce=nonce, verifier=verifier)

    def is_callback(self, url: str) -> bool:
        """Whether ``url`` is this RP's redirect URI (for ``page.wait_for_url``)."""
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}" == self.redirect_uri

    def complete(self, request: AuthorizationRequest, callback_url: str) -> SignIn:
        """Check the authorization response at ``callback_url``, redeem the code, verify the ID token."""
        assert self.is_callback(callback_url), callback_url
        parts = urlsplit(callback_url)
        received_paths = [urlsplit(path).path for path in self.receiver.received]
        assert parts.path in received_paths, f"the RP never received {parts.path}: {received_paths}"
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        assert "error" not in query, f"authorization error: {query}"
        assert query.get("state") == request.state, "state does not match the request"
        assert query.get("iss") == self.idp.issuer, "RFC 9207 iss missing or wrong"
        token = self._http.post(
            self.provider["token_endpoint"],
            auth=(self.client_id, self._secret),
            data={
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": self.redirect_uri,
                "code_verifier": request.verifier,
            },
            timeout=10,
        )
        assert token.status_code == 200, token.text
        tokens: dict[str, Any] = token.json()
        claims = self._verify(tokens["id_token"], nonce=request.nonce, access_token=tokens["access_token"])
        return SignIn(claims=claims, tokens=tokens)

    def _verify(self, id_token: str, *, nonce: str, access_token: str) -> dict[str, Any]:
        # OIDC Core §3.1.3.7: signature with the provider's keys and advertised algorithms only.
        decoded = jwt.decode(id_token, self._keys, algorithms=self._algorithms)
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.idp.issuer},
            aud={"essential": True, "value": self.client_id},
            nonce={"essential": True, "value": nonce},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )
        registry.validate(decoded.claims)
        claims = dict(decoded.claims)
        # §3.1.3.8 / §3.3.2.11: at_hash is the left half of the hash of the access token.
        alg = str(decoded.header["alg"])
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        assert alg in ("ES256", "RS256"), alg
        expected = _b64url(digest[: len(digest) // 2])
        assert hmac.compare_digest(str(claims.get("at_hash", "")), expected), "at_hash does not match"
        return claims
