"""Typed settings: one YAML file plus ``ONEGATE_*`` environment overrides.

Precedence, highest first: environment (``ONEGATE_SECTION__OPTION``), the YAML file,
the defaults below. Every option is documented in docs/configuration.md, and a test
fails when that document and this model disagree.

Start-up validates everything once and turns any problem into one
:class:`ConfigError` line that names the option and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "DatabaseSettings",
    "GatewayRoute",
    "GatewaySettings",
    "IdpSettings",
    "KVSettings",
    "KeyvaultSettings",
    "LogSettings",
    "MfaSettings",
    "ServerSettings",
    "Settings",
    "SocPlace",
    "SocSettings",
    "WebSettings",
    "iter_options",
    "load_settings",
]

ENV_PREFIX = "ONEGATE_"
# Environment variables read outside the settings model (by the CLI or keyvault).
_ENV_OUTSIDE_MODEL = frozenset({"ONEGATE_CONFIG", "ONEGATE_MASTER_KEY", "ONEGATE_MASTER_KEY_PREVIOUS"})


# The parsed YAML file while load_settings() builds a Settings; read by _YamlSource.
_yaml_data: ContextVar[dict[str, Any]] = ContextVar("onegate_yaml_data", default={})  # noqa: B039


class ConfigError(Exception):
    """Configuration that cannot start the service; the message is one line for the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(
        8000, ge=0, le=65535, description="The one public port every role is served on (0: any free port)."
    )
    https: bool = Field(
        False, description="Serve behind TLS: Secure cookies, HSTS and `__Host-` cookie names."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs whose `X-Forwarded-*` headers are believed; nobody else's are.",
    )


class DatabaseSettings(_Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL. Unset: SQLite (WAL) at `<data_dir>/onegate.db`. "
        "PostgreSQL: `postgresql+asyncpg://user@host:5432/db`.",
    )
    pool_size: int = Field(10, ge=1, le=200, description="Connections kept per process (PostgreSQL).")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection.")
    echo: bool = Field(False, description="Log every SQL statement (debugging only).")

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value


class KVSettings(_Section):
    backend: Literal["memory", "redis"] = Field(
        "memory", description="`memory` (one process, embedded default) or `redis`."
    )
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL when `backend` is `redis`.")
    prefix: str = Field("onegate:", description="Prefix of every key this deployment writes.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for Redis.")


class KeyvaultSettings(_Section):
    suite: Literal["aes", "gm"] = Field(
        "aes", description="Encryption at rest: `aes` (AES-256-GCM, SHA-256) or `gm` (SM4-GCM, SM3)."
    )
    signing_alg: Literal["ES256", "RS256"] = Field("ES256", description="Algorithm of new signing keys.")
    prepublish_seconds: int = Field(
        3600, ge=0, description="A rotated-in signing key is published this long before it signs."
    )
    retire_after_seconds: int = Field(
        86400,
        ge=0,
        description="A replaced signing key stays published this long (longest token lifetime + leeway).",
    )


class WebSettings(_Section):
    default_locale: Literal["zh_CN", "en"] = Field("zh_CN", description="UI language when none is asked for.")


class IdpSettings(_Section):
    issuer: str | None = Field(
        None,
        description="The OIDC issuer URL (`iss`), e.g. `https://idp.example.gov.cn`. Unset: "
        "`http://idp.localhost:<port>` (demo only).",
    )
    code_lifetime: int = Field(
        60, ge=10, le=600, description="Seconds an authorization code stays redeemable."
    )
    id_token_lifetime: int = Field(300, ge=60, le=86400, description="Default ID token lifetime (seconds).")
    access_token_lifetime: int = Field(
        600, ge=60, le=86400, description="Default access token lifetime (seconds); clients may set less."
    )
    refresh_token_lifetime: int = Field(
        28800, ge=300, le=2592000, description="Default refresh token lifetime (seconds)."
    )
    session_idle_timeout: int = Field(
        1800, ge=60, description="An SSO session ends after this many idle seconds."
    )
    session_absolute_timeout: int = Field(
        43200, ge=300, description="An SSO session ends this many seconds after sign-in, active or not."
    )
    password_min_length: int = Field(12, ge=8, le=128, description="Shortest password accepted.")
    lockout_threshold: int = Field(
        5, ge=1, le=100, description="Failed sign-ins in a row that lock an account."
    )
    lockout_seconds: int = Field(
        900, ge=1, description="First lockout duration; each further lockout doubles it (progressive)."
    )
    lockout_max_seconds: int = Field(86400, ge=1, description="Longest automatic lockout.")
    ip_throttle_limit: int = Field(
        30, ge=1, description="Failed sign-ins per source address per window before it is throttled."
    )
    ip_throttle_window: int = Field(300, ge=1, description="Window of the per-address throttle (seconds).")


class MfaSettings(_Section):
    required: bool = Field(
        False,
        description="Require a second factor of every user (otherwise per group, per client and per "
        "`acr_values`).",
    )
    totp_issuer: str = Field(
        "OneGate 统一身份门户",
        min_length=1,
        max_length=64,
        description="Issuer name authenticator apps show.",
    )
    totp_max_failures: int = Field(
        5,
        ge=1,
        le=100,
        description="Wrong codes per user within `totp_failure_window` before codes are refused.",
    )
    totp_failure_window: int = Field(300, ge=30, description="Window of the code attempt limit (seconds).")
    webauthn_rp_id: str | None = Field(
        None,
        description="WebAuthn relying-party id (a registrable domain). Unset: the issuer's host name. "
        "Changing it makes every registered passkey unusable.",
    )
    webauthn_origins: list[str] = Field(
        default_factory=list,
        description="Exact origins allowed in WebAuthn ceremonies. Empty: the issuer's origin only.",
    )
    webauthn_user_verification: Literal["required", "preferred", "discouraged"] = Field(
        "preferred",
        description="User verification (PIN / biometric) asked of authenticators used as a second factor; "
        "signing in without a password always requires it.",
    )
    webauthn_attestation: Literal["none", "direct"] = Field(
        "none", description="Attestation asked for at registration (`direct` with an AAGUID allow-list)."
    )
    webauthn_aaguids: list[str] = Field(
        default_factory=list,
        description="Authenticator models (AAGUIDs) allowed to register. Empty: any.",
    )
    webauthn_challenge_ttl: int = Field(
        300, ge=30, le=900, description="Seconds a WebAuthn challenge stays usable (once)."
    )
    reauth_max_age: int = Field(
        900,
        ge=60,
        le=86400,
        description="Changing one's second factors needs one proved within this many seconds.",
    )


class GatewayRoute(_Section):
    """One application behind the gateway: the hosts it answers on and where its upstream is."""

    app: str = Field(description="The application's name in the access policy, e.g. `hr`.")
    hosts: list[str] = Field(min_length=1, description="Host names the application answers on.")
    upstream: str | None = Field(
        None, description="`http://host:port` of the application; unset: forward-auth only (nginx / Caddy)."
    )
    path_prefix: str = Field("/", description="Only requests under this path prefix go to this route.")
    preserve_host: bool = Field(
        False, description="Send the client's Host upstream instead of the upstream's."
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, description="Seconds to connect to the upstream.")
    read_timeout: float = Field(
        60.0, gt=0, le=3600, description="Seconds to wait for each read from the upstream."
    )

    @field_validator("hosts")
    @classmethod
    def _lower_hosts(cls, hosts: list[str]) -> list[str]:
        return [h.strip().lower() for h in hosts]


class GatewaySettings(_Section):
    issuer: str | None = Field(
        None, description="The OIDC provider the gateway signs users in with. Unset: this deployment's IdP."
    )
    client_id: str = Field("onegate-gateway", description="The gateway's client id at the OIDC provider.")
    client_secret: str | None = Field(
        None,
        description="Its client secret. Unset with the built-in IdP: registered and kept in keyvault "
        "at start-up.",
    )
    routes: list[GatewayRoute] = Field(
        default_factory=list, description="The applications behind the gateway (see docs/gateway.md)."
    )
    session_idle_timeout: int = Field(
        1800, ge=60, le=86400, description="A gateway session unused this many seconds ends."
    )
    session_absolute_timeout: int = Field(
        36000,
        ge=300,
        le=604800,
        description="A gateway session ends this many seconds after sign-in at the latest.",
    )
    cookie_name: str = Field(
        "onegate_gw",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The gateway's session cookie, one per host.",
    )
    assertion_lifetime: int = Field(
        60, ge=10, le=60, description="Seconds an identity assertion passed upstream is valid."
    )
    max_body_bytes: int | None = Field(
        None, ge=0, description="Largest request body accepted (bytes); unset: no limit (streamed)."
    )


class SocPlace(_Section):
    cidr: str = Field(description="A network (CIDR) of the site.")
    place: str = Field(min_length=1, max_length=200, description="Where it is: a building, district or zone.")
    lat: float | None = Field(None, ge=-90, le=90, description="Latitude, for impossible-travel speeds.")
    lon: float | None = Field(None, ge=-180, le=180, description="Longitude.")

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        import ipaddress

        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError as e:
            raise ValueError(f"{value!r} is not a network") from e


class SocSettings(_Section):
    store: Literal["sqlite", "opensearch", "elasticsearch"] = Field(
        "sqlite", description="Where events are kept: the embedded SQLite store, OpenSearch or Elasticsearch."
    )
    store_url: str | None = Field(
        None, description="OpenSearch / Elasticsearch URL (`https://user:password@host:9200`)."
    )
    index_prefix: str = Field(
        "onegate-events",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Index name prefix (search stores).",
    )
    retention_days: int = Field(
        90, ge=1, le=3650, description="Events older than this many days are removed."
    )
    spool_max_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Disk the ingest spool may use while the store is down or slow (bytes).",
    )
    ingest_batch: int = Field(
        5000,
        ge=1,
        le=10000,
        description="Documents written to the store per batch, at most (a backlog goes in such batches).",
    )
    rules_disabled: list[str] = Field(
        default_factory=list, description="Built-in detection rules not to run (rule ids)."
    )
    rule_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Thresholds and windows per rule id, overriding the defaults (docs/soc.md).",
    )
    auto_response: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Response actions run automatically for a new alert of a rule "
        "(`{onegate.success-after-attack: [revoke-sessions]}`).",
    )
    places: list[SocPlace] = Field(
        default_factory=list, description="The site's networks and where they are (impossible travel)."
    )
    sigma_dir: Path | None = Field(
        None, description="A folder of Sigma rules (`*.yml`) run as scheduled rules. Unset: none."
    )
    incident_window: int = Field(
        86400,
        ge=60,
        le=30 * 86400,
        description="Alerts sharing an entity within this many seconds join one incident.",
    )
    transport: Literal["bus", "redis"] = Field(
        "bus",
        description="How events reach the SOC: `bus` (in the process: `serve --role all`) or `redis` "
        "(every process publishes to a Redis stream on kv.url; SOC processes read it in a consumer group).",
    )
    consumer: str | None = Field(
        None,
        max_length=200,
        description="This SOC process's name in the consumer group (default: the host name).",
    )
    ingest_keys: dict[str, str] = Field(
        default_factory=dict,
        description="HTTP bulk ingest: source name -> its key (at least 16 characters; set it from the "
        "environment).",
    )
    syslog_port: int | None = Field(
        None, ge=1, le=65535, description="Syslog (RFC 5424 over TCP) port. Unset: off."
    )
    syslog_host: str = Field("127.0.0.1", description="Address the syslog receiver binds to.")
    syslog_allowed: list[str] = Field(
        default_factory=list,
        description="Networks allowed to send syslog (empty: any that reaches the port).",
    )


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    json_lines: bool = Field(True, description="One JSON object per line (`false`: readable console lines).")


class Settings(BaseSettings):
    """Everything a OneGate process is configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    data_dir: Path = Field(Path("./var"), description="Where the database, keys and spool live.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kv: KVSettings = Field(default_factory=KVSettings)
    keyvault: KeyvaultSettings = Field(default_factory=KeyvaultSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    idp: IdpSettings = Field(default_factory=IdpSettings)
    mfa: MfaSettings = Field(default_factory=MfaSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    soc: SocSettings = Field(default_factory=SocSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command-line overrides (init values) > environment > YAML file > defaults.
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL in use (the embedded SQLite file unless one is configured)."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'onegate.db').resolve()}"


class _YamlSource(PydanticBaseSettingsSource):
    """The already parsed and checked YAML file (see load_settings)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _yaml_data.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get())


def iter_options(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf option as (dotted name, field info), in declaration order."""
    options: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            options.extend(iter_options(annotation, f"{prefix}{name}."))
        else:
            options.append((f"{prefix}{name}", field))
    return options


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"configuration file {path}: cannot read it ({e.strerror})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise ConfigError(f"configuration file {path}:{where}: {problem}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path}: the top level must be a mapping of options")
    return data


def _unknown_env(environ: Mapping[str, str]) -> list[str]:
    known = {f"{ENV_PREFIX}{name.replace('.', '__')}".upper() for name, _ in iter_options()}
    return sorted(
        key
        for key in environ
        if key.upper().startswith(ENV_PREFIX) and key.upper() not in known | _ENV_OUTSIDE_MODEL
    )


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown option {where!r} ({source}); see docs/configuration.md"
    return f"option {where!r} ({source}): {first['msg']}"


def load_settings(config_file: Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read, merge and validate the configuration, or raise a one-line :class:`ConfigError`.

    ``config_file`` defaults to ``$ONEGATE_CONFIG``. ``overrides`` (dotted names, from CLI
    flags) win over both the file and the environment.
    """
    env_file = os.environ.get("ONEGATE_CONFIG")
    path = config_file or (Path(env_file) if env_file else None)
    data = _read_yaml(path) if path else {}
    unknown = _unknown_env(os.environ)
    if unknown:
        raise ConfigError(f"unknown option in environment: {unknown[0]}; see docs/configuration.md")
    source = f"file {path} or environment" if path else "environment"
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        section, _, option = dotted.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[option] = value
    token = _yaml_data.set(data)
    try:
        return Settings(**nested)
    except ValidationError as e:
        where = ".".join(str(part) for part in e.errors()[0]["loc"])
        raise ConfigError(_describe(e, "command line" if where in (overrides or {}) else source)) from e
    finally:
        _yaml_data.reset(token)
