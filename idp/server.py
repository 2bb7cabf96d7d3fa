"""The OpenID Provider on authlib's ``AuthorizationServer``, and its wiring.

authlib's protocol code is synchronous; the IdP's storage (SQL, KV) is asynchronous. The two
meet in one pattern, used by every endpoint:

1. *prefetch* — the endpoint reads, asynchronously, everything authlib will ask for (the
   client, the authorization code, the refresh token and its grant, the user's profile, the
   SSO session) and puts it on the request (:class:`OneGateRequest`);
2. *decide* — authlib validates and builds the response synchronously; our grant and
   endpoint subclasses answer its callbacks (``query_client``, ``query_authorization_code``,
   ``save_token`` ...) from the request, and record on it what must be stored;
3. *commit* — the endpoint performs those writes (single-use consumption first, with a
   compare-and-set that can still refuse), emits events, and only then answers.

No thread hop and no second event loop: signing is the only CPU work in step 2 and the
keyring keeps its keys loaded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    OAuth2Error,
    OAuth2Request,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc9207 import IssuerParameter

from idp.clients.auth import ClientAuthFailure, RemoteJwks
from idp.clients.auth import authenticate_client as authenticate
from idp.clients.models import ClientType
from idp.clients.records import RegisteredClient
from idp.clients.services import ClientRegistry
from idp.errors import printable
from idp.events import auth_event
from idp.integrations.starlette import OAuth2Response, StarletteOAuth2Request
from idp.tokens import CodeRecord, GrantRecord, Lifetimes, RefreshRecord, TokenService

if TYPE_CHECKING:
    from idp.claims import UserProfile
    from idp.consents import ConsentStore
    from idp.context import IdpContext
    from idp.sessions import SSOSession

__all__ = [
    "CONFIDENTIAL_AUTH_METHODS",
    "TOKEN_AUTH_METHODS",
    "ClientAuthentication",
    "IssuedTokens",
    "OAuthClient",
    "OneGateAuthorizationServer",
    "OneGateRequest",
    "Provider",
    "answering",
    "authorization_error",
]

CONFIDENTIAL_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
TOKEN_AUTH_METHODS = (*CONFIDENTIAL_AUTH_METHODS, "none")


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """A registered client (``idp.clients.records.RegisteredClient``) as authlib sees it."""

    def __init__(self, row: RegisteredClient) -> None:
        self.row = row
        self.client_id: str = row.client_id
        self.pk: int = row.id
        self.is_public = row.client_type is ClientType.PUBLIC
        self.auth_method = str(row.token_endpoint_auth_method)
        self.first_party: bool = row.first_party
        self.redirect_uris = tuple(row.redirect_uris or ())
        self.post_logout_redirect_uris = tuple(row.post_logout_redirect_uris or ())
        self.grant_types = frozenset(row.grant_types or ())
        self.scopes = frozenset(row.scopes or ())
        self.backchannel_logout_uri: str | None = row.backchannel_logout_uri

    @property
    def requires_pkce(self) -> bool:
        """RFC 9700 §2.1.1: PKCE for public clients always, for others unless turned off."""
        return self.is_public or self.row.require_pkce

    def lifetimes(self, tokens: TokenService) -> Lifetimes:
        return tokens.lifetimes(
            access=self.row.access_token_lifetime,
            id_token=self.row.id_token_lifetime,
            refresh=self.row.refresh_token_lifetime,
        )

    # -- authlib's ClientMixin ------------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        # OIDC Core §3.1.2.1: redirect_uri is REQUIRED; we never guess one (no default).
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scopes when the client may ask for every one of them, else None
        (``invalid_scope``): a request is refused rather than silently narrowed."""
        if not scope:
            return ""
        requested = list(dict.fromkeys(scope.split()))
        if any(s not in self.scopes for s in requested):
            return None
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string comparison (RFC 9700 §4.1.3, OIDC Core §3.1.2.1): no prefix, case or
        # percent-encoding normalisation, no query merging.
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # authentication happens before authlib runs (Provider.authenticate_client)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class IssuedTokens:
    """What a token request produced, to be stored before the response leaves."""

    grant: GrantRecord | None = None
    refresh_token: str | None = None
    refresh_record: RefreshRecord | None = None


class OneGateRequest(StarletteOAuth2Request):
    """An OAuth 2 request with the state of the prefetch / decide / commit pattern."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.known_client: OAuthClient | None = None  # answers query_client
        self.session: SSOSession | None = None  # the SSO session an authorization comes from
        self.profile: UserProfile | None = None
        self.released_claims: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.code_record: CodeRecord | None = None
        self.code_raw: bytes | None = None
        self.refresh_raw: bytes | None = None
        self.refresh_record: RefreshRecord | None = None
        self.grant: GrantRecord | None = None
        self.grant_raw: bytes | None = None
        self.refusal: str | None = None  # why prefetch refused, for the event (never shown)
        self.new_code: tuple[str, CodeRecord] | None = None
        self.issued = IssuedTokens()
        self.presented: Any = None  # revocation / introspection: the token looked up
        self.to_revoke: Any = None
        self.source_ip: str | None = None  # for events


class OneGateAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's authorization server with OneGate's grants, endpoints and responses."""

    def __init__(self, tokens: TokenService) -> None:
        super().__init__(scopes_supported=None)
        # Imported here: the grant and endpoint modules name this module's types.
        from idp.endpoints.introspection import IntrospectionEndpoint
        from idp.endpoints.revocation import RevocationEndpoint
        from idp.grants import IDToken
        from idp.grants.authorization_code import AuthorizationCodeGrant, S256CodeChallenge
        from idp.grants.client_credentials import ClientCredentialsGrant
        from idp.grants.refresh_token import RefreshTokenGrant

        self.tokens = tokens
        self.issuer = tokens.issuer
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(), IDToken(tokens)])
        self.register_grant(RefreshTokenGrant, [IDToken(tokens)])
        self.register_grant(ClientCredentialsGrant)
        self.register_extension(_Issuer(tokens.issuer))
        self.register_endpoint(RevocationEndpoint(self))
        self.register_endpoint(IntrospectionEndpoint(self))

    # -- authlib's framework hooks --------------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        """The prefetched client of the request being validated (see :func:`answering`)."""
        request = _answering.get()
        client = request.known_client if request is not None else None
        return client if client is not None and client.client_id == client_id else None

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if not isinstance(request, OneGateRequest):
            raise TypeError("build the request with idp.integrations.starlette.read_oauth2_request")
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> OAuth2Response:
        return OAuth2Response(status, body, list(headers))

    def save_token(self, token: dict[str, Any], request: OneGateRequest) -> None:
        return None  # what was issued is on request.issued; the endpoint's commit stores it

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None  # events are emitted by the endpoints, after the commit

    def authenticate_client(
        self, request: OneGateRequest, methods: Collection[str], endpoint: str = "token"
    ) -> Any:
        """The client the endpoint authenticated before authlib ran, if by one of ``methods``."""
        if request.client is None or request.auth_method not in methods:
            raise InvalidClientError(description="The client is not allowed to authenticate this way.")
        return request.client

    def validate_requested_scope(self, scope: str | None) -> None:
        return None  # per client: OAuthClient.get_allowed_scope

    def get_authorization_grant(self, request: OneGateRequest) -> Any:
        if request.payload.response_type == "code":
            return super().get_authorization_grant(request)
        # Not authlib's version: it quotes the raw response_type in error_description, where
        # some characters make authlib raise ValueError (a 500 instead of a 400).
        client = request.known_client
        uri = request.payload.redirect_uri
        redirect_uri = uri if client is not None and uri and client.check_redirect_uri(uri) else None
        raise UnsupportedResponseTypeError(
            printable(request.payload.response_type),
            description="Only response_type 'code' is supported.",
            redirect_uri=redirect_uri,
        )

    def handle_error_response(self, request: Any, error: OAuth2Error) -> OAuth2Response:
        if error.redirect_uri:
            # RFC 9207 §2: error responses of the authorization endpoint carry iss too.
            return authorization_error(error, self.issuer)
        result: OAuth2Response = self.handle_response(*error(self.get_error_uri(request, error)))
        return result


# authlib's query_client(client_id) has no request argument; the grant being validated names
# its request here for the length of one synchronous call (see answering()).
_answering: ContextVar[OneGateRequest | None] = ContextVar("onegate_oauth_request", default=None)


@contextmanager
def answering(request: OneGateRequest) -> Iterator[None]:
    """Let ``query_client`` answer from ``request``'s prefetched client during the block."""
    token = _answering.set(request)
    try:
        yield
    finally:
        _answering.reset(token)


class _Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: ``iss`` in every successful authorization response."""

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer

    def get_issuer(self) -> str:
        return self._issuer


def authorization_error(error: OAuth2Error, issuer: str) -> OAuth2Response:
    """Redirect ``error`` to its (validated) redirect_uri with ``state`` and ``iss``."""
    params = [*error.get_body(), ("iss", issuer)]
    return OAuth2Response(302, "", [("Location", add_params_to_uri(error.redirect_uri, params))])


# -- what the endpoints are built from ------------------------------------------------------------


@dataclass(frozen=True)
class ClientAuthentication:
    """The outcome of client authentication at a back-channel endpoint."""

    client: OAuthClient | None
    method: str | None
    reason: str | None = None  # why it failed (for the event), None on success
    used_basic: bool = False  # RFC 6749 §5.2: then answer 401 with WWW-Authenticate
    presented_id: str | None = None  # the client_id it claimed (events only)


@dataclass(frozen=True)
class Provider:
    """Everything the protocol endpoints need: the IdP context, the client registry, the
    consent store, the token service and the authorization server."""

    idp: IdpContext
    clients: ClientRegistry
    consents: ConsentStore
    tokens: TokenService
    server: OneGateAuthorizationServer
    jwks_max_age: int = 300
    remote_jwks: RemoteJwks = field(default_factory=RemoteJwks)

    @classmethod
    def create(
        cls, idp: IdpContext, clients: ClientRegistry, consents: ConsentStore, *, jwks_max_age: int = 300
    ) -> Provider:
        tokens = TokenService(
            issuer=idp.issuer, kv=idp.kv, signing=idp.signing, settings=idp.settings, clock=idp.clock
        )
        return cls(idp, clients, consents, tokens, OneGateAuthorizationServer(tokens), jwks_max_age)

    def emit(
        self,
        action: str,
        *,
        success: bool,
        request: OneGateRequest | None = None,
        reason: str | None = None,
        client_id: str | None = None,
        **fields: Any,
    ) -> None:
        """Emit an IdP event about ``request`` (its client and source address by default)."""
        if client_id is None and request is not None and request.client is not None:
            client_id = request.client.client_id
        self.idp.events.emit(
            auth_event(
                action,
                success=success,
                reason=reason,
                client_id=client_id,
                source_ip=request.source_ip if request is not None else None,
                **fields,
            )
        )

    async def client(self, client_id: str | None) -> OAuthClient | None:
        """The enabled client ``client_id``, or None."""
        if not client_id:
            return None
        registered = await self.clients.get(client_id)
        return None if registered is None else OAuthClient(registered)

    async def profile(self, user_id: int) -> UserProfile | None:
        """The user's directory profile (claims and status), or None when unknown."""
        return await self.idp.directory.profile(user_id)

    async def authenticate_client(
        self, request: OneGateRequest, headers: Mapping[str, str]
    ) -> ClientAuthentication:
        """RFC 6749 §2.3 client authentication (``idp.clients.auth``): one method, the client's own.

        ``headers`` are the HTTP request's own (all values: two Authorization headers fail).
        """
        issuer = self.idp.issuer
        path = request.uri.split("?", 1)[0].rsplit("/", 1)[-1]
        outcome = await authenticate(
            self.clients,
            headers=headers,
            form=request.pairs(),
            token_endpoint_url=f"{issuer}/token",
            kv=self.idp.kv,
            clock=self.idp.clock,
            issuer=issuer,
            endpoint_url=f"{issuer}/{path}",
            remote_jwks=self.remote_jwks,
        )
        if isinstance(outcome, ClientAuthFailure):
            return ClientAuthentication(
                None, None, str(outcome.reason), outcome.basic_attempted, outcome.client_id
            )
        return ClientAuthentication(OAuthClient(outcome.client), str(outcome.method))
