"""authlib's OAuth 2 server on Starlette: requests in, responses out.

authlib's protocol core is framework-free; a framework plugs in through
``create_oauth2_request`` and ``handle_response`` (compare
``authlib/integrations/flask_oauth2``). This module is that glue for Starlette:

* :func:`read_oauth2_request` builds an :class:`StarletteOAuth2Request` from a Starlette
  request, keeping *every* value of every parameter (``multi_items()``), so authlib's
  "parameter included more than once" checks (RFC 6749 §3.1, §3.2) see the duplicates;
* :class:`OAuth2Response` is what the server's ``handle_response`` returns: a plain
  (status, body, headers) value the endpoint may still inspect (the token endpoint stores
  what it issued before answering), with the ``location`` attribute authlib's RFC 9207
  extension edits; :func:`to_response` turns it into a Starlette ``Response``.

Bodies are read here, bounded, and only as ``application/x-www-form-urlencoded`` (RFC 6749
§3.2, §4.1.3; RFC 7009 §2.1; RFC 7662 §2.1; RFC 9126 §2.1).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Payload, OAuth2Request
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "FORM_CONTENT_TYPE",
    "OAuth2Response",
    "StarletteOAuth2Payload",
    "StarletteOAuth2Request",
    "read_form",
    "read_oauth2_request",
    "to_response",
]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024  # an authorization request with a large `claims` fits easily
MAX_FORM_FIELDS = 64

Pairs = list[tuple[str, str]]
R = TypeVar("R", bound="StarletteOAuth2Request")


class StarletteOAuth2Payload(OAuth2Payload):  # type: ignore[misc]
    """The request parameters: ``data`` has the first value of each name, ``datalist`` all."""

    def __init__(self, pairs: Pairs) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in pairs:
            self._data.setdefault(name, value)
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    """authlib's ``OAuth2Request`` over parameters already read from a Starlette request.

    ``OAuth2Request.__init__`` is not called: all it adds to the attributes set here is a
    transport check on the request URL (``InsecureTransportError``), which behind a
    TLS-terminating proxy sees ``http`` and on a demo host name (``idp.localhost``) refuses
    plain HTTP that the operator chose. Whether the IdP is served over TLS is decided once,
    by configuration (``server.https`` and the issuer URL), not guessed per request.
    """

    def __init__(self, method: str, uri: str, headers: dict[str, str], query: Pairs, form: Pairs) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self._body = None
        self._query = query
        self._form = form
        self.payload = StarletteOAuth2Payload(query + form)
        self.client: Any = None
        self.auth_method: str | None = None
        self.user: Any = None
        self.authorization_code: Any = None
        self.refresh_token: Any = None
        self.credential: Any = None
        self._scope: str | None = None

    @property
    def args(self) -> dict[str, str]:
        return dict(reversed(self._query))  # first value wins, like ``payload.data``

    @property
    def form(self) -> dict[str, str]:
        return dict(reversed(self._form))

    def pairs(self) -> Pairs:
        """Every parameter, query first, in the order received."""
        return self._query + self._form


async def read_form(request: Request, *, max_bytes: int = MAX_FORM_BYTES) -> Pairs:
    """The urlencoded body as (name, value) pairs; ``invalid_request`` for anything else."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise InvalidRequestError(f"The body must be {FORM_CONTENT_TYPE}.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise InvalidRequestError("The request body is too large.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidRequestError("The request body is too large.")
    try:
        return parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError as e:  # UnicodeDecodeError is one; so is "too many fields"
        raise InvalidRequestError("The request body is not valid form data.") from e


async def read_oauth2_request(
    request: Request,
    *,
    source: Literal["query", "form", "any"],
    cls: type[R] = StarletteOAuth2Request,
) -> R:
    """An OAuth 2 request from ``request``'s query string, its form body, or (``any``) the
    query for GET and the body for POST (OIDC Core §3.1.2.1, RP-Initiated Logout §2)."""
    query: Pairs = []
    form: Pairs = []
    if source == "form" or (source == "any" and request.method == "POST"):
        form = await read_form(request)
    else:
        query = list(request.query_params.multi_items())
        if len(query) > MAX_FORM_FIELDS:
            raise InvalidRequestError("Too many parameters.")
    headers = {name.title(): value for name, value in request.headers.items()}
    return cls(request.method, str(request.url), headers, query, form)


@dataclass
class OAuth2Response:
    """authlib's (status, body, headers), before it becomes a Starlette response."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return next((value for name, value in self.headers if name.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        # authlib's RFC 9207 extension rewrites the redirect of an authorization response.
        self.headers = [(n, v) for n, v in self.headers if n.lower() != "location"] + [("Location", value)]


def to_response(result: OAuth2Response) -> Response:
    """The Starlette response for an authlib result (JSON bodies as compact UTF-8)."""
    body = result.body
    if isinstance(body, dict):
        content: bytes | str = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    else:
        content = body or b""
    headers = {name: value for name, value in result.headers if name.lower() != "www-authenticate"}
    response = Response(content, status_code=result.status, headers=headers)
    # Several WWW-Authenticate challenges are several headers (RFC 9110 §11.6.1), never one.
    for name, value in result.headers:
        if name.lower() == "www-authenticate":
            response.headers.append("WWW-Authenticate", value)
    return response
