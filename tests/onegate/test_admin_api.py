"""The admin API in the IdP role app, in-process (httpx over ASGI): admin API keys as bearer
tokens (401 and an event for every refused key), the gateway's routes (validation 422, conflicts
409, unknown 404, stale revision 412, malformed bodies 400 / 413 / 415, never a 500), their history,
and the OpenAPI document."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from core.events import Category, Event, Outcome
from core.settings import Settings, load_settings
from onegate.admin.app import admin_keys, build_admin_api
from onegate.idp_app import build_idp_app
from onegate.runtime import Runtime, open_runtime
from tests.conftest import _run

ISSUER = "http://idp.example.gov"
BASE = "http://idp.example.gov/api/admin/v1"
CONFIG_ROUTES = [
    {"app": "hr", "hosts": ["hr.example.gov"], "upstream": "http://10.2.0.15:8080"},
    {"app": "oa-legacy", "hosts": ["oa.example.gov"]},
]
PERMITS = {"app": "permits", "hosts": ["permits.example.gov"], "upstream": "http://10.2.0.16:8080"}


def _settings(data_dir: Path) -> Settings:
    return load_settings(None, overrides={"data_dir": data_dir, "gateway": {"routes": CONFIG_ROUTES}})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised data dir, made once per module and copied for each test."""
    from onegate.bootstrap import initialise

    where = tmp_path_factory.mktemp("admin-api") / "data"

    async def init() -> None:
        await initialise(_settings(where))

    _run(init())
    return where


@dataclass
class Api:
    runtime: Runtime
    client: httpx.AsyncClient
    key: str
    key_id: str
    events: list[Event]

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.key}"}

    async def actions(self) -> list[str]:
        await self.runtime.bus.drain()
        return [e.action for e in self.events]

    async def last(self, action: str) -> Event:
        await self.runtime.bus.drain()
        return [e for e in self.events if e.action == action][-1]


@pytest.fixture
async def api(template: Path, tmp_path: Path) -> AsyncIterator[Api]:
    data_dir = tmp_path / "data"
    shutil.copytree(template, data_dir)
    runtime = await open_runtime(_settings(data_dir))
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    runtime.bus.subscribe("test", record)
    await runtime.bus.start()
    key, secret = await admin_keys(runtime).create("ops-robot", actor="cli:test")
    idp = build_idp_app(runtime, issuer=ISSUER)
    transport = httpx.ASGITransport(app=idp.app, client=("10.9.8.7", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield Api(runtime, client, secret, key.id, events)
    finally:
        await runtime.close()


# -- authentication ----------------------------------------------------------------------------


async def test_refused_keys_are_401_with_a_bearer_challenge_and_an_event(api: Api) -> None:
    revoked_key, revoked = await admin_keys(api.runtime).create("old", actor="cli:test")
    await admin_keys(api.runtime).revoke(revoked_key.id, actor="cli:test")
    expired_keys = admin_keys(api.runtime)
    expired_key, expired = await expired_keys.create(
        "short", actor="cli:test", expires_in=timedelta(seconds=1)
    )
    async with api.runtime.sessions() as s, s.begin():  # make it a key that expired an hour ago
        await s.execute(
            text("UPDATE admin_api_keys SET expires_at = :t WHERE id = :id"),
            {"t": datetime.now(UTC) - timedelta(hours=1), "id": expired_key.id},
        )
    wrong = api.key[:-4] + ("AAAA" if not api.key.endswith("AAAA") else "BBBB")
    unknown = "oga_000000000000_" + api.key.split("_", 2)[2]
    cases: list[tuple[dict[str, str], str, str | None]] = [
        ({}, "missing", None),
        ({"authorization": "Basic b3BzOnB3"}, "malformed", None),
        ({"authorization": "Bearer "}, "malformed", None),
        ({"authorization": "Bearer not-a-key"}, "malformed", None),
        ({"authorization": f"Bearer {wrong}"}, "mismatch", api.key_id),
        ({"authorization": f"Bearer {unknown}"}, "unknown", "000000000000"),
        ({"authorization": f"Bearer {revoked}"}, "revoked", revoked_key.id),
        ({"authorization": f"Bearer {expired}"}, "expired", expired_key.id),
    ]
    for headers, reason, key_id in cases:
        response = await api.client.get("/gateway/routes", headers=headers)
        assert response.status_code == 401, (reason, response.text)
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer realm=")
        assert ('error="invalid_token"' in challenge) is (reason != "missing")
        body = response.json()
        assert body["error"] == "unauthenticated"
        assert body["message"] == {"zh": "需要有效的管理 API 密钥", "en": "a valid admin API key is required"}
        assert response.headers["cache-control"] == "no-store"
        event = await api.last("admin-api-key-refused")
        assert event.get("onegate.reason") == reason
        assert event.get("onegate.admin.key_id") == key_id
        assert event.category is Category.AUTHENTICATION and event.outcome is Outcome.FAILURE
        assert (
            event.get("source.ip") == "10.9.8.7" and event.get("url.path") == "/api/admin/v1/gateway/routes"
        )
        assert api.key not in json.dumps(event.to_ecs())  # the key never reaches an event
    assert (await api.actions()).count("admin-api-key-refused") == len(cases)
    # Two Authorization headers are refused too, and nothing is learnt about paths without a key.
    twice = await api.client.get(
        "/gateway/routes", headers=[("authorization", f"Bearer {api.key}"), ("authorization", "Bearer x")]
    )
    assert twice.status_code == 401
    assert (await api.client.get("/no/such/thing")).status_code == 401
    # The good key works, and its use is recorded.
    assert (await api.client.get("/gateway/routes", headers=api.auth())).status_code == 200
    listed = {k.id: k for k in await admin_keys(api.runtime).all()}
    assert listed[api.key_id].last_used_at is not None and listed[revoked_key.id].last_used_at is None


async def test_a_revoked_key_is_refused_on_its_next_request(api: Api) -> None:
    assert (await api.client.get("/gateway/routes", headers=api.auth())).status_code == 200
    await admin_keys(api.runtime).revoke("ops-robot", actor="cli:test")
    assert (await api.client.get("/gateway/routes", headers=api.auth())).status_code == 401
    assert (await api.last("admin-api-key-revoked")).get("onegate.admin.key_name") == "ops-robot"


async def test_keys_are_stored_only_as_a_hash(api: Api) -> None:
    async with api.runtime.sessions() as s:
        rows = (await s.execute(text("SELECT id, digest FROM admin_api_keys"))).all()
    secret = api.key.split("_", 2)[2]
    assert api.key.startswith("oga_") and len(secret) == 43  # 32 random bytes
    assert all(secret not in row.digest and len(row.digest) == 64 for row in rows)


# -- routes ------------------------------------------------------------------------------------


async def test_create_read_replace_delete_and_history(api: Api) -> None:
    listed = await api.client.get("/gateway/routes", headers=api.auth())
    assert listed.status_code == 200
    assert [(r["app"], r["source"]) for r in listed.json()["routes"]] == [
        ("hr", "config"),
        ("oa-legacy", "config"),
    ]
    assert listed.json()["revision"] == 0

    created = await api.client.post(
        "/gateway/routes", json={**PERMITS, "comment": "new permits system"}, headers=api.auth()
    )
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/admin/v1/gateway/routes/permits"
    assert created.headers["etag"] == '"1"'
    route = created.json()
    assert (
        route["source"] == "api" and route["updated_by"] == "api-key:ops-robot" and route["enabled"] is True
    )
    assert route["read_timeout"] == 60.0 and route["path_prefix"] == "/"

    read = await api.client.get("/gateway/routes/permits", headers=api.auth())
    assert read.json() == route and read.headers["etag"] == '"1"'
    config = await api.client.get("/gateway/routes/hr", headers=api.auth())
    assert config.status_code == 200 and config.json()["source"] == "config" and "etag" not in config.headers

    # PUT replaces: read_timeout given, path_prefix back to its default.
    stale = await api.client.put(
        "/gateway/routes/permits",
        json={"hosts": ["permits.example.gov"], "read_timeout": 120},
        headers={**api.auth(), "if-match": '"7"'},
    )
    assert stale.status_code == 412 and stale.json()["error"] == "revision_mismatch"
    replaced = await api.client.put(
        "/gateway/routes/permits",
        json={"hosts": ["permits.example.gov", "xuke.example.gov"], "read_timeout": 120, "comment": "alias"},
        headers={**api.auth(), "if-match": '"1"'},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["hosts"] == ["permits.example.gov", "xuke.example.gov"]
    assert replaced.json()["upstream"] is None and replaced.headers["etag"] == '"2"'
    renamed = await api.client.put(
        "/gateway/routes/permits", json={"app": "other", "hosts": ["p.example.gov"]}, headers=api.auth()
    )
    assert renamed.status_code == 422 and renamed.json()["field"] == "app"

    stale_delete = await api.client.delete(
        "/gateway/routes/permits", headers={**api.auth(), "if-match": '"1"'}
    )
    assert stale_delete.status_code == 412
    deleted = await api.client.delete(
        "/gateway/routes/permits", params={"comment": "moved"}, headers={**api.auth(), "if-match": '"2"'}
    )
    assert deleted.status_code == 204
    gone = await api.client.get("/gateway/routes/permits", headers=api.auth())
    assert gone.status_code == 404 and gone.json()["error"] == "route_not_found"
    assert (await api.client.delete("/gateway/routes/permits", headers=api.auth())).status_code == 404

    history = (await api.client.get("/gateway/routes/permits/history", headers=api.auth())).json()["changes"]
    assert [(c["revision"], c["action"], c["actor"], c["comment"]) for c in history] == [
        (3, "remove", "api-key:ops-robot", "moved"),
        (2, "update", "api-key:ops-robot", "alias"),
        (1, "create", "api-key:ops-robot", "new permits system"),
    ]
    assert history[1]["changed"] == ["hosts", "upstream", "read_timeout"]
    assert (
        history[1]["before"]["upstream"] == "http://10.2.0.16:8080"
        and history[1]["after"]["upstream"] is None
    )
    everything = await api.client.get("/gateway/route-changes", params={"limit": 2}, headers=api.auth())
    assert [c["revision"] for c in everything.json()["changes"]] == [3, 2]

    actions = [a for a in await api.actions() if a.startswith("gateway-route")]
    assert [a for a in actions if a != "gateway-route-rejected"] == [
        "gateway-route-created",
        "gateway-route-updated",
        "gateway-route-removed",
    ]
    assert actions.count("gateway-route-rejected") == 3  # two stale revisions, one unknown route
    created_event = await api.last("gateway-route-created")
    assert created_event.get("labels.actor") == "api-key:ops-robot"
    assert created_event.get("onegate.admin.key_id") == api.key_id
    assert created_event.get("source.ip") == "10.9.8.7" and created_event.get("http.request.method") == "POST"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hosts": ["x.example.gov"]}, "app"),
        ({**PERMITS, "app": "许可"}, "app"),
        ({**PERMITS, "hosts": []}, "hosts"),
        ({**PERMITS, "hosts": ["permits.example.gov:443"]}, "hosts"),
        ({**PERMITS, "upstream": "http://10.2.0.16:8080/path"}, "upstream"),
        ({**PERMITS, "path_prefix": "/a%2Fb"}, "path_prefix"),
        ({**PERMITS, "connect_timeout": "5"}, "connect_timeout"),
        ({**PERMITS, "read_timeout": -1}, "read_timeout"),
        ({**PERMITS, "enabled": 1}, "enabled"),
        ({**PERMITS, "colour": "red"}, "colour"),
        ({**PERMITS, "comment": 5}, "comment"),
        ({**PERMITS, "comment": "x" * 1001}, "comment"),
    ],
)
async def test_values_that_do_not_validate_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/gateway/routes", json=body, headers=api.auth())
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_route" and answer["field"].split(".")[0] == field
    assert answer["message"]["zh"] and answer["message"]["en"] and answer["request_id"]


async def test_conflicts_are_409_with_the_reason(api: Api) -> None:
    assert (await api.client.post("/gateway/routes", json=PERMITS, headers=api.auth())).status_code == 201
    cases = [
        ("POST", "/gateway/routes", PERMITS, "route_exists"),
        ("POST", "/gateway/routes", {"app": "hr", "hosts": ["hr2.example.gov"]}, "config_conflict"),
        (
            "POST",
            "/gateway/routes",
            {"app": "r", "hosts": ["hr.example.gov"], "path_prefix": "/r"},
            "config_conflict",
        ),
        ("POST", "/gateway/routes", {"app": "p2", "hosts": ["permits.example.gov"]}, "host_conflict"),
        ("POST", "/gateway/routes", {"app": "idp", "hosts": ["idp.example.gov"]}, "reserved_host"),
        ("PUT", "/gateway/routes/hr", {"hosts": ["hr.example.gov"]}, "config_conflict"),
        ("DELETE", "/gateway/routes/oa-legacy", None, "config_conflict"),
    ]
    for method, path, body, code in cases:
        response = await api.client.request(method, path, json=body, headers=api.auth())
        assert response.status_code == 409, (code, response.text)
        assert response.json()["error"] == code
    shadow = await api.client.post(
        "/gateway/routes",
        json={"app": "r", "hosts": ["hr.example.gov"], "path_prefix": "/r"},
        headers=api.auth(),
    )
    message = shadow.json()["message"]
    assert (
        "configuration" in message["en"] and "配置文件" in message["zh"] and shadow.json()["field"] == "hosts"
    )
    await api.runtime.bus.drain()
    rejected = [e for e in api.events if e.action == "gateway-route-rejected"]
    assert len(rejected) == len(cases) + 1
    assert all(
        e.get("labels.actor") == "api-key:ops-robot" and e.get("onegate.admin.key_id") for e in rejected
    )
    assert (
        await api.client.put("/gateway/routes/nope", json={"hosts": ["n.example.gov"]}, headers=api.auth())
    ).status_code == 404


async def test_malformed_requests_are_4xx_never_500(api: Api) -> None:
    auth = api.auth()
    post = api.client.post

    async def status(response: Any) -> tuple[int, str]:
        r = await response
        return r.status_code, r.json()["error"]

    json_type = {**auth, "content-type": "application/json"}
    assert await status(post("/gateway/routes", content=b"{", headers=json_type)) == (400, "bad_json")
    assert await status(post("/gateway/routes", content=b"[]", headers=json_type)) == (400, "bad_json")
    duplicate = b'{"app": "a", "app": "b", "hosts": ["a.example.gov"]}'
    assert await status(post("/gateway/routes", content=duplicate, headers=json_type)) == (400, "bad_json")
    nan = b'{"app": "a", "hosts": ["a.example.gov"], "read_timeout": NaN}'
    assert await status(post("/gateway/routes", content=nan, headers=json_type)) == (400, "bad_json")
    assert await status(post("/gateway/routes", content=b"\xff\xfe", headers=json_type)) == (400, "bad_json")
    deep = b"[" * 10_000 + b"]" * 10_000
    assert (await post("/gateway/routes", content=deep, headers=json_type)).status_code in (400, 413)
    form = {**auth, "content-type": "application/x-www-form-urlencoded"}
    assert await status(post("/gateway/routes", content=b"app=a", headers=form)) == (
        415,
        "unsupported_media_type",
    )
    big = json.dumps({**PERMITS, "comment": "x" * 70_000}).encode()
    assert await status(post("/gateway/routes", content=big, headers=json_type)) == (413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(70):
            yield b" " * 1024

    assert await status(post("/gateway/routes", content=chunks(), headers=json_type)) == (
        413,
        "payload_too_large",
    )

    wrong_method = await api.client.patch("/gateway/routes/permits", json={}, headers=auth)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET, PUT, DELETE"
    assert await status(api.client.get("/gateway/nothing", headers=auth)) == (404, "not_found")
    assert await status(api.client.get("/gateway/route-changes?limit=0", headers=auth)) == (
        400,
        "bad_request",
    )
    assert await status(api.client.get("/gateway/route-changes?limit=x", headers=auth)) == (
        400,
        "bad_request",
    )
    outer = await api.client.get("http://idp.example.gov/api/admin/v2/x")
    assert outer.status_code == 404 and outer.headers["content-type"].startswith("application/json")


async def test_no_csrf_token_is_needed_and_cookies_authenticate_nothing(api: Api) -> None:
    # A browser-style cross-site POST: no key, so 401 (a cookie session is not a key).
    cross = await api.client.post(
        "/gateway/routes",
        json=PERMITS,
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site", "cookie": "onegate_sid=x"},
    )
    assert cross.status_code == 401
    # A script with a key needs no CSRF token.
    assert (await api.client.post("/gateway/routes", json=PERMITS, headers=api.auth())).status_code == 201


async def test_a_database_outage_is_a_503(api: Api) -> None:
    async with api.runtime.engine.begin() as conn:
        await conn.execute(text("DROP TABLE gateway_routes"))
    response = await api.client.get("/gateway/routes", headers=api.auth())
    assert response.status_code == 503 and response.json()["error"] == "unavailable"
    assert "Traceback" not in response.text


# -- OpenAPI -----------------------------------------------------------------------------------


async def test_the_openapi_document_is_public_and_describes_every_endpoint(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1") and document["servers"] == [{"url": "/api/admin/v1"}]
    assert document["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    served = {(e.method, e.path) for e in build_admin_api(api.runtime)._endpoints}
    assert described == served

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in set(refs(document)):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # every reference resolves
    create = document["components"]["schemas"]["RouteCreate"]
    assert create["required"] == ["app", "hosts"]
    assert "Seconds to connect" in create["properties"]["connect_timeout"]["description"]
