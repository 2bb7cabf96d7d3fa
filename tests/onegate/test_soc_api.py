"""The SOC API in the SOC role app, in-process (httpx over ASGI) on a real runtime with the SOC
started: the admin API keys (401 without one), alerts (filters, pages, If-Match, refused changes,
bulk), evidence read from the event store, incidents with their timeline, a response action that
reaches the gateway's risk scores, drills scored from tagged events, the rules in effect, event
search, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.events import Event
from core.settings import Settings, load_settings
from gateway.risk import RiskScores
from idp.events import auth_event
from onegate.admin.app import admin_keys
from onegate.admin.soc_api import soc_endpoints
from onegate.apps import soc_role_app
from onegate.runtime import Runtime, open_runtime
from onegate.soc_app import Soc, build_soc
from soc.alerts import Alert
from soc.detections.model import RuleInfo, Severity, Signal, Text
from tests.conftest import _run

BASE = "http://soc.example.gov/api/soc/v1"
ATTACKER = "203.0.113.7"
RED_TEAM = "198.51.100.0/24"

ADMIN_FAILURE = """\
title: Failed Sign-In To An Admin Account
id: 0b6a3f3e-52a8-4f0d-9a44-7d1f5f0c2b02
status: experimental
tags:
    - attack.credential-access
    - attack.t1110.001
logsource:
    category: authentication
    product: onegate
    service: idp
detection:
    selection:
        event.outcome: failure
        user.name|startswith: 'admin'
    condition: selection
level: medium
x-onegate-name-zh: 管理员账号登录失败
"""


def _settings(data_dir: Path) -> Settings:
    rules = data_dir / "sigma"
    return load_settings(
        None,
        overrides={
            "data_dir": data_dir,
            "soc": {
                "rule_params": {"onegate.brute-force": {"threshold": 5}},
                "rules_disabled": ["onegate.first-seen-device"],
                "sigma_dir": rules,
            },
        },
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised data dir with a rules folder (one good Sigma rule, one broken), made once
    per module and copied for each test."""
    from onegate.bootstrap import initialise

    where = tmp_path_factory.mktemp("soc-api") / "data"
    _run(initialise(_settings(where)))
    (where / "sigma").mkdir()
    (where / "sigma" / "admin_failure.yml").write_text(ADMIN_FAILURE, encoding="utf-8")
    (where / "sigma" / "broken.yml").write_text("title: [unclosed\n", encoding="utf-8")
    return where


@dataclass
class Api:
    runtime: Runtime
    soc: Soc
    client: httpx.AsyncClient
    key: str
    events: list[Event]

    def auth(self, **headers: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}", **{k.replace("_", "-"): v for k, v in headers.items()}}

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, body: Mapping[str, Any], **headers: str) -> httpx.Response:
        return await self.client.post(path, json=dict(body), headers=self.auth(**headers))

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
    soc = build_soc(runtime)
    await soc.start()
    _key, secret = await admin_keys(runtime).create("soc-robot", actor="cli:test")
    transport = httpx.ASGITransport(app=soc_role_app(runtime, soc), client=("10.9.8.7", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield Api(runtime, soc, client, secret, events)
    finally:
        await soc.close()
        await runtime.close()


def rule(rule_id: str, severity: Severity, *suppress_by: str) -> RuleInfo:
    return RuleInfo(
        id=rule_id,
        name=Text(rule_id.title(), f"规则 {rule_id}"),
        description=Text("d", "描述"),
        severity=severity,
        risk_score={"low": 21, "medium": 47, "high": 73, "critical": 99}[severity.value],
        technique="T1110",
        tactic="credential-access",
        suppress_by=suppress_by,
    )


SPRAY = rule("test.spray", Severity.HIGH, "source.ip")
BRUTE = rule("test.brute", Severity.MEDIUM, "user.name")
DOWNLOAD = rule("test.download", Severity.LOW, "user.name")


async def signal(api: Api, info: RuleInfo, entity: Mapping[str, str]) -> Alert:
    """An alert raised through the SOC's own sink (the detections' path: alert, incident)."""
    raised = Signal(info, time.time(), dict(entity), (uuid.uuid4().hex,), Text("reason", "原因"))
    alert = await api.soc.triage.raise_signal(raised)
    return await api.soc.alerts.get(alert.id)


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def brute_force(api: Api, username: str = "wangfang") -> Alert:
    """Seven failed sign-ins of ``username`` from the attacker's address, on the bus: the
    brute-force rule (threshold 5 here) raises an alert at the fifth with the five as evidence,
    and the next two join it: seven events of evidence; all are in the store."""
    for _ in range(7):
        api.runtime.bus.emit(
            auth_event(
                "user-login", success=False, reason="bad_password", username=username, source_ip=ATTACKER
            )
        )

    async def alerted() -> bool:
        page = await api.soc.alerts.list(rule_id="onegate.brute-force")
        return page.total == 1 and page.alerts[0].event_count == 7

    await until(alerted)
    assert await api.soc.ingest.drain(10)
    [alert] = (await api.soc.alerts.list(rule_id="onegate.brute-force")).alerts
    return alert


# -- the edge ----------------------------------------------------------------------------------


async def test_without_a_key_every_path_is_401_with_an_event(api: Api) -> None:
    for method, path in [("GET", "/alerts"), ("POST", "/alerts/bulk"), ("GET", "/no/such/thing")]:
        response = await api.client.request(method, path, json={})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer realm=")
    refused = await api.last("admin-api-key-refused")
    assert refused.get("url.path") == "/api/soc/v1/no/such/thing" and refused.get("source.ip") == "10.9.8.7"
    # A browser's cross-site POST with a cookie: still 401 (JSON), no CSRF page in the way.
    cross = await api.client.post(
        "/alerts/bulk",
        json={"ids": ["x"], "action": "acknowledge"},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site", "cookie": "onegate_sid=x"},
    )
    assert cross.status_code == 401 and cross.headers["content-type"].startswith("application/json")
    wrong = await api.client.get("/alerts", headers={"authorization": "Bearer oga_000000000000_" + "A" * 43})
    assert wrong.status_code == 401


async def test_the_openapi_document_is_public_and_describes_every_endpoint(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1") and document["servers"] == [{"url": "/api/soc/v1"}]
    assert document["info"]["title"] == "OneGate SOC API"
    described = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    served = {(e.method, e.path) for e in soc_endpoints(api.soc)}
    assert described == served
    assert {"/alerts/{alert_id}/acknowledge", "/incidents/{incident_id}", "/drills/{drill_id}/score"} <= set(
        document["paths"]
    )
    operation_ids = [
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if "operationId" in op
    ]
    assert len(operation_ids) == len(set(operation_ids))

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
    close = document["paths"]["/alerts/{alert_id}/close"]["post"]
    assert {"404", "409", "412", "422"} <= set(close["responses"])


# -- alerts ------------------------------------------------------------------------------------


async def test_alerts_are_listed_filtered_and_paged(api: Api) -> None:
    spray = await signal(api, SPRAY, {"source.ip": ATTACKER})
    brute = await signal(api, BRUTE, {"user.name": "wangfang", "source.ip": ATTACKER})
    download = await signal(api, DOWNLOAD, {"user.name": "zhangwei"})
    everything = await api.get("/alerts")
    assert everything["total"] == 3 and everything["cursor"] is None
    assert [a["id"] for a in everything["alerts"]] == [download.id, brute.id, spray.id]  # newest first
    assert everything["alerts"][0]["rule"]["name"] == {"en": "Test.Download", "zh": "规则 test.download"}

    def ids(page: dict[str, Any]) -> list[str]:
        return [a["id"] for a in page["alerts"]]

    assert ids(await api.get("/alerts", severity="high,medium")) == [brute.id, spray.id]
    assert ids(await api.get("/alerts", **{"user.name": "wangfang"})) == [brute.id]
    assert ids(await api.get("/alerts", **{"source.ip": ATTACKER})) == [brute.id, spray.id]
    assert ids(await api.get("/alerts", rule_id="test.spray")) == [spray.id]
    assert ids(await api.get("/alerts", assignee="unassigned", status="open")) == ids(everything)
    assert ids(await api.get("/alerts", incident_id=brute.incident_id)) == [brute.id, spray.id]
    assert (
        ids(await api.get("/alerts", since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00+08:00")) == []
    )
    first = await api.get("/alerts", limit=2)
    assert ids(first) == [download.id, brute.id] and first["total"] == 3 and first["cursor"]
    second = await api.get("/alerts", limit=2, cursor=first["cursor"])
    assert ids(second) == [spray.id] and second["cursor"] is None

    for params, field in [
        ({"status": "pending"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-02T09:00:00"}, "since"),  # no zone
        ({"limit": "0"}, "limit"),
        ({"overdue": "yes"}, "overdue"),
        ({"user": "wangfang"}, "user"),  # not a filter: refused, not ignored
    ]:
        response = await api.client.get("/alerts", params=params, headers=api.auth())
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"] == "bad_request" and response.json()["field"] == field
    bad_cursor = await api.client.get("/alerts", params={"cursor": "nope"}, headers=api.auth())
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"] == "invalid_cursor"


async def test_triage_with_if_match_refusals_and_history(api: Api) -> None:
    alert = await signal(api, BRUTE, {"user.name": "wangfang"})
    read = await api.client.get(f"/alerts/{alert.id}", headers=api.auth())
    assert read.status_code == 200 and read.headers["etag"] == '"1"' and read.json()["status"] == "open"

    acked = await api.post(f"/alerts/{alert.id}/acknowledge", {"note": "looking"}, if_match='"1"')
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged" and acked.headers["etag"] == '"2"'
    event = await api.last("alert-acknowledged")
    assert event.get("onegate.actor") == "api-key:soc-robot"

    stale = await api.post(f"/alerts/{alert.id}/assign", {"assignee": "lina"}, if_match='"1"')
    assert stale.status_code == 412 and stale.json()["error"] == "version_mismatch"
    assert "已被修改" in stale.json()["message"]["zh"]
    garbled = await api.post(f"/alerts/{alert.id}/assign", {"assignee": "lina"}, if_match="W/x")
    assert garbled.status_code == 412
    again = await api.post(f"/alerts/{alert.id}/acknowledge", {})
    assert again.status_code == 409 and again.json()["error"] == "already_acknowledged"
    assert again.json()["message"]["zh"] and again.json()["message"]["en"]

    no_reason = await api.post(f"/alerts/{alert.id}/close", {"note": "done"})
    assert no_reason.status_code == 422, no_reason.text
    assert no_reason.json()["error"] == "close_reason_required" and no_reason.json()["field"] == "reason"
    odd_reason = await api.post(f"/alerts/{alert.id}/close", {"reason": "bored"})
    assert odd_reason.status_code == 422 and odd_reason.json()["error"] == "unknown_close_reason"
    unknown_field = await api.post(f"/alerts/{alert.id}/close", {"reason": "true_positive", "colour": "red"})
    assert unknown_field.status_code == 422 and unknown_field.json()["field"] == "colour"
    empty = await api.post(f"/alerts/{alert.id}/comment", {"text": "  "})
    assert empty.status_code == 422 and empty.json()["error"] == "comment_empty"
    bad_name = await api.post(f"/alerts/{alert.id}/assign", {"assignee": "li na"})
    assert bad_name.status_code == 422 and bad_name.json()["field"] == "assignee"

    assert (await api.post(f"/alerts/{alert.id}/assign", {"assignee": "lina"})).status_code == 200
    assert (await api.post(f"/alerts/{alert.id}/comment", {"text": "账号已通知本人"})).status_code == 200
    closed = await api.post(
        f"/alerts/{alert.id}/close", {"reason": "true_positive", "note": "handled"}, if_match='"4"'
    )
    assert closed.status_code == 200 and closed.json()["close_reason"] == "true_positive"
    assert (await api.post(f"/alerts/{alert.id}/reopen", {})).json()["status"] == "open"
    assert (await api.post(f"/alerts/{alert.id}/assign", {"assignee": None})).json()["assignee"] is None

    history = (await api.get(f"/alerts/{alert.id}/history"))["history"]
    assert [h["action"] for h in history] == [
        "created",
        "acknowledged",
        "assigned",
        "commented",
        "closed",
        "reopened",
        "unassigned",
    ]
    assert {h["actor"] for h in history[1:]} == {"api-key:soc-robot"}
    assert history[3]["note"] == "账号已通知本人"

    missing = await api.client.get(f"/alerts/{'f' * 32}", headers=api.auth())
    assert missing.status_code == 404 and missing.json()["error"] == "alert_not_found"
    assert (await api.post(f"/alerts/{'f' * 32}/acknowledge", {})).status_code == 404
    form = await api.client.post(
        f"/alerts/{alert.id}/acknowledge", content=b"note=x", headers=api.auth(content_type="text/plain")
    )
    assert form.status_code == 415
    bare = await api.client.post(f"/alerts/{alert.id}/acknowledge", headers=api.auth())  # no body: {}
    assert bare.status_code == 200 and bare.json()["status"] == "acknowledged"


async def test_bulk_changes_report_mixed_results(api: Api) -> None:
    a = await signal(api, SPRAY, {"source.ip": ATTACKER})
    b = await signal(api, BRUTE, {"user.name": "wangfang"})
    c = await signal(api, DOWNLOAD, {"user.name": "zhangwei"})
    await api.soc.alerts.acknowledge(c.id, actor="lina")
    missing = "f" * 32
    response = await api.post(
        "/alerts/bulk", {"ids": [a.id, b.id, c.id, missing], "action": "acknowledge", "versions": {b.id: 7}}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert [x["id"] for x in result["changed"]] == [a.id]
    assert [(r["id"], r["code"]) for r in result["refused"]] == [
        (b.id, "version_mismatch"),
        (c.id, "already_acknowledged"),
        (missing, "alert_not_found"),
    ]
    assert all(r["zh"] and r["en"] for r in result["refused"])
    closed = await api.post(
        "/alerts/bulk", {"ids": [a.id, b.id], "action": "close", "reason": "false_positive"}
    )
    assert [x["status"] for x in closed.json()["changed"]] == ["closed", "closed"]
    for body, code in [
        ({"ids": [a.id], "action": "close"}, "close_reason_required"),
        ({"ids": [a.id], "action": "explode"}, "unknown_action"),
        ({"ids": [], "action": "acknowledge"}, "invalid_value"),
        ({"ids": [a.id], "action": "assign"}, "invalid_value"),  # assignee (or null) is required
        ({"ids": [a.id] * 1001, "action": "acknowledge"}, "invalid_value"),
    ]:
        refused = await api.post("/alerts/bulk", body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["error"] == code


# -- from events to a response -----------------------------------------------------------------


async def test_evidence_incident_timeline_and_a_response(api: Api) -> None:
    await api.runtime.directory.add_user(username="wangfang", display_name="王芳", password_hash=None)
    alert = await brute_force(api)
    evidence = await api.get(f"/alerts/{alert.id}/evidence")
    assert evidence["total"] == 7 and evidence["missing"] == []
    assert [e["event.id"] for e in evidence["events"]] == evidence["event_ids"]
    assert {e["event.action"] for e in evidence["events"]} == {"user-login"}
    assert {e["user.name"] for e in evidence["events"]} == {"wangfang"}
    paged = await api.get(f"/alerts/{alert.id}/evidence", offset=1, limit=10)
    assert paged["event_ids"] == evidence["event_ids"][1:] and len(paged["events"]) == 6

    [incident] = (await api.get("/incidents"))["incidents"]
    assert incident["id"] == alert.incident_id and incident["alert_count"] == 1

    # A response for the alert: the target comes from its entity; the incident counts it.
    run = await api.post(
        "/responses", {"action": "raise-risk", "reason": "brute force on her account", "alert_id": alert.id}
    )
    assert run.status_code == 201, run.text
    record = run.json()
    assert record["target"] == "wangfang" and record["status"] == "done"
    assert record["actor"] == "api-key:soc-robot" and record["incident_id"] == incident["id"]
    assert record["params"] == {"score": 80, "seconds": 86400}
    assert await RiskScores(api.runtime.kv).score("wangfang") == 80
    executed = await api.last("response-executed")
    assert executed.get("onegate.response.target") == "wangfang"
    # An explicit target and parameters; an unknown user is recorded as a failed run.
    blocked = await api.post(
        "/responses",
        {"action": "block-address", "target": ATTACKER, "params": {"seconds": 600}, "reason": "attacker"},
    )
    assert blocked.status_code == 201 and blocked.json()["status"] == "done"
    failed = await api.post("/responses", {"action": "lock-account", "target": "nobody", "reason": "x"})
    assert failed.status_code == 201 and failed.json()["status"] == "failed"
    listed = await api.get("/responses", alert_id=alert.id)
    assert [r["action"] for r in listed["responses"]] == ["raise-risk"]
    assert len((await api.get("/responses", target=ATTACKER))["responses"]) == 1

    detail = await api.client.get(f"/incidents/{incident['id']}", headers=api.auth())
    assert detail.status_code == 200
    body = detail.json()
    assert (
        body["incident"]["responded_at"] is not None
        and detail.headers["etag"] == f'"{body["incident"]["version"]}"'
    )
    assert [a["id"] for a in body["alerts"]] == [alert.id] and body["timeline_truncated"] is False
    kinds = [entry["kind"] for entry in body["timeline"]]
    assert kinds.count("event") == 7 and kinds.count("alert") == 1 and kinds.count("response") == 1
    assert "incident-change" in kinds
    moments = [datetime.fromisoformat(entry["at"].replace("Z", "+00:00")) for entry in body["timeline"]]
    assert moments == sorted(moments)
    assert kinds.index("event") < kinds.index("alert") < kinds.index("response")  # evidence, alert, response
    events = [entry for entry in body["timeline"] if entry["kind"] == "event"]
    assert all(
        entry["alert_ids"] == [alert.id] and entry["event"]["source.ip"] == ATTACKER for entry in events
    )

    # Working the incident: If-Match on the status, refused moves, comments.
    version = body["incident"]["version"]
    stale = await api.post(
        f"/incidents/{incident['id']}/status", {"status": "contained"}, if_match=f'"{version - 1}"'
    )
    assert stale.status_code == 412 and stale.json()["error"] == "version_conflict"
    contained = await api.post(
        f"/incidents/{incident['id']}/status", {"status": "contained"}, if_match=f'"{version}"'
    )
    assert contained.status_code == 200 and contained.json()["status"] == "contained"
    assert contained.headers["etag"] == f'"{version + 1}"'
    assert (await api.last("incident-contained")).get("onegate.actor") == "api-key:soc-robot"
    wrong = await api.post(f"/incidents/{incident['id']}/status", {"status": "merged"})
    assert wrong.status_code == 422 and wrong.json()["field"] == "status"
    comment = await api.post(f"/incidents/{incident['id']}/comment", {"text": "已封禁来源地址"})
    assert comment.status_code == 200
    assert (await api.post(f"/incidents/{incident['id']}/comment", {"text": " "})).status_code == 422
    resolved = await api.post(f"/incidents/{incident['id']}/status", {"status": "resolved", "note": "done"})
    assert resolved.json()["resolved_at"] is not None
    refused = await api.post(f"/incidents/{incident['id']}/status", {"status": "contained"})
    assert refused.status_code == 409 and refused.json()["error"] == "invalid_status"
    assert (await api.client.get("/incidents/nope", headers=api.auth())).status_code == 404


async def test_a_response_without_a_target_takes_it_from_the_incident_or_is_refused(api: Api) -> None:
    spray = await signal(api, SPRAY, {"source.ip": ATTACKER})
    brute = await signal(api, BRUTE, {"user.name": "wangfang", "source.ip": ATTACKER})
    assert brute.incident_id == spray.incident_id
    # The spray names no user: 422 naming the target.
    none = await api.post("/responses", {"action": "revoke-sessions", "reason": "x", "alert_id": spray.id})
    assert none.status_code == 422 and none.json()["field"] == "target"
    by_incident = await api.post(
        "/responses", {"action": "block-address", "reason": "spray", "incident_id": spray.incident_id}
    )
    assert by_incident.status_code == 201 and by_incident.json()["target"] == ATTACKER
    one_user = await api.post(
        "/responses", {"action": "raise-risk", "reason": "x", "incident_id": spray.incident_id}
    )
    assert one_user.json()["target"] == "wangfang"  # the one user the incident names (unknown here)
    await signal(api, BRUTE, {"user.name": "zhangwei", "source.ip": ATTACKER})
    several = await api.post(
        "/responses", {"action": "revoke-sessions", "reason": "x", "incident_id": spray.incident_id}
    )
    assert several.status_code == 422 and "wangfang" in several.json()["message"]["en"]
    for body, status, code in [
        ({"action": "explode", "reason": "x", "target": "a"}, 422, "unknown_action"),
        ({"action": "raise-risk", "target": "wangfang"}, 422, "invalid_value"),  # no reason
        ({"action": "block-address", "target": "not-an-ip", "reason": "x"}, 422, "invalid_target"),
        (
            {"action": "raise-risk", "target": "wangfang", "reason": "x", "params": {"score": 500}},
            422,
            "invalid_params",
        ),
        ({"action": "raise-risk", "reason": "x", "alert_id": "f" * 32}, 404, "alert_not_found"),
        ({"action": "raise-risk", "reason": "x", "incident_id": "nope"}, 404, "no_incident"),
    ]:
        response = await api.post("/responses", body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"] == code
    actions = (await api.get("/responses/actions"))["actions"]
    assert [a["action"] for a in actions] == [
        "revoke-sessions",
        "lock-account",
        "block-address",
        "raise-risk",
        "force-mfa-reenrolment",
    ]
    assert (
        actions[2]["name"] == {"en": "Block address", "zh": "封禁地址"}
        and actions[2]["target"] == "source.ip"
    )
    # Merging and linking by hand.
    other = await signal(api, DOWNLOAD, {"user.name": "liuyang"})
    assert other.incident_id != spray.incident_id
    merged = await api.post(f"/incidents/{spray.incident_id}/merge", {"incidents": [other.incident_id]})
    assert merged.status_code == 200 and merged.json()["alert_count"] == 4
    gone = await api.post(f"/incidents/{other.incident_id}/comment", {"text": "x"})
    assert gone.status_code == 409 and gone.json()["error"] == "merged"
    unlinked = await api.post(f"/incidents/{spray.incident_id}/unlink", {"alert_id": other.id})
    assert unlinked.json()["alert_count"] == 3
    again = await api.post(f"/incidents/{spray.incident_id}/unlink", {"alert_id": other.id})
    assert again.status_code == 409 and again.json()["error"] == "not_linked"
    assert (await api.post(f"/incidents/{spray.incident_id}/link", {"alert_id": other.id})).status_code == 200
    assigned = await api.post(f"/incidents/{spray.incident_id}/assign", {"assignee": "lina"})
    assert assigned.json()["assignee"] == "lina"
    stale = await api.post(f"/incidents/{spray.incident_id}/assign", {"assignee": "lina"}, if_match='"1"')
    assert stale.status_code == 412
    listed = await api.get("/incidents", status="merged")
    assert [i["id"] for i in listed["incidents"]] == [other.incident_id]


# -- drills, rules, events ---------------------------------------------------------------------


async def test_a_drill_is_planned_run_and_scored(api: Api) -> None:
    now = datetime.now(UTC)
    plan = {
        "id": "2026-q4-red-team",
        "name": "2026 年第四季度攻防演练",
        "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "sources": [RED_TEAM],
        "accounts": ["redteam01"],
        "detect_within_s": 600,
    }
    created = await api.post("/drills", plan)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/soc/v1/drills/2026-q4-red-team"
    assert created.json()["sources"] == [RED_TEAM] and created.json()["cases"] == []
    assert (await api.last("drill-created")).get("onegate.actor") == "api-key:soc-robot"
    duplicate = await api.post("/drills", plan)
    assert duplicate.status_code == 409 and duplicate.json()["error"] == "exists"
    for body, code in [
        ({**plan, "id": "Bad Id"}, "invalid_id"),
        ({**plan, "id": "d2", "sources": ["nowhere"]}, "invalid_source"),
        ({**plan, "id": "d3", "starts_at": "tomorrow"}, "invalid_value"),
        ({**plan, "id": "d4", "sources": [], "accounts": []}, "no_red_team"),
    ]:
        refused = await api.post("/drills", body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["error"] == code

    drill = "/drills/2026-q4-red-team"
    bad_case = await api.post(f"{drill}/cases", {"technique": "brute", "action": "x"})
    assert bad_case.status_code == 422 and bad_case.json()["error"] == "invalid_technique"
    case = await api.post(
        f"{drill}/cases", {"technique": "T1110.001", "action": "暴力破解测试账号", "source": "198.51.100.9"}
    )
    assert case.status_code == 201 and case.json()["seq"] == 1
    quiet = await api.post(
        f"{drill}/cases", {"technique": "T1595.003", "action": "scan", "source": "198.51.100.10"}
    )
    assert quiet.json()["seq"] == 2
    executed = await api.post(f"{drill}/cases/1/executed", {"at": (now - timedelta(seconds=5)).isoformat()})
    assert executed.status_code == 200 and executed.json()["executed_at"] is not None
    assert (await api.post(f"{drill}/cases/2/executed", {})).status_code == 200
    assert (await api.post(f"{drill}/cases/9/executed", {})).status_code == 404
    assert (await api.post(f"{drill}/cases/abc/executed", {})).json()["error"] == "no_case"
    assert (await api.post("/drills/nope/cases", {"technique": "T1110", "action": "x"})).status_code == 404

    # The red team's failed sign-in is tagged at once (the drill reached ingest's tagger on creation).
    api.runtime.bus.emit(
        auth_event(
            "user-login", success=False, reason="bad_password", username="redteam01", source_ip="198.51.100.9"
        )
    )
    await api.runtime.bus.drain()
    assert await api.soc.ingest.drain(10)
    score = await api.get(f"{drill}/score")
    assert score["drill"] == "2026-q4-red-team"
    assert [(c["seq"], c["measured"], c["events"]) for c in score["cases"]] == [
        (1, "logged", 1),
        (2, "none", 0),
    ]
    assert score["overall"]["executed"] == 2

    odd = await api.post(f"{drill}/cases/2/override", {"outcome": "great"})
    assert odd.status_code == 422 and odd.json()["error"] == "invalid_outcome"
    assert (await api.post(f"{drill}/cases/2/override", {"note": "x"})).status_code == 422
    override = await api.post(
        f"{drill}/cases/2/override", {"outcome": "blocked", "note": "firewall dropped it"}
    )
    assert override.json()["override"] == "blocked" and override.json()["override_by"] == "api-key:soc-robot"
    rescored = await api.get(f"{drill}/score")
    assert (
        rescored["cases"][1]["outcome"] == "blocked" and rescored["overall"]["share_alerted_or_better"] == 0.5
    )
    listed = await api.get("/drills")
    assert [d["id"] for d in listed["drills"]] == ["2026-q4-red-team"]
    assert [c["seq"] for c in (await api.get(drill))["cases"]] == [1, 2]
    assert (await api.client.get("/drills/nope", headers=api.auth())).status_code == 404


async def test_the_rules_in_effect(api: Api) -> None:
    rules = await api.get("/rules")
    streaming = {r["id"]: r for r in rules["streaming"]}
    brute = streaming["onegate.brute-force"]
    assert brute["params"]["threshold"] == 5 and brute["enabled"] is True  # the site's override
    assert brute["name"]["zh"] == "单一账号暴力破解" and brute["technique"] == "T1110.001"
    assert streaming["onegate.first-seen-device"]["enabled"] is False
    [sigma] = rules["sigma"]
    assert sigma["id"] == "sigma.0b6a3f3e-52a8-4f0d-9a44-7d1f5f0c2b02" and sigma["kind"] == "scheduled"
    assert sigma["name"]["zh"] == "管理员账号登录失败" and sigma["file"] == "admin_failure.yml"
    assert set(sigma["queries"]) >= {"sqlite", "opensearch"}
    assert "admin" in sigma["queries"]["opensearch"]
    [error] = rules["sigma_errors"]
    assert error["file"] == "broken.yml" and error["message"]


async def test_events_are_searched_and_aggregated(api: Api) -> None:
    for user in ("wangfang", "wangfang", "zhangwei"):
        api.runtime.bus.emit(
            auth_event("user-login", success=False, reason="bad_password", username=user, source_ip=ATTACKER)
        )
    await api.runtime.bus.drain()
    assert await api.soc.ingest.drain(10)
    found = await api.get("/events", q="event.action:user-login AND user.name:wangfang")
    assert found["total"] == 2 and {e["user.name"] for e in found["events"]} == {"wangfang"}
    first = await api.get("/events", q="event.action:user-login", size=2)
    assert first["total"] == 3 and len(first["events"]) == 2 and first["cursor"]
    second = await api.get("/events", q="event.action:user-login", size=2, cursor=first["cursor"])
    assert len(second["events"]) == 1
    ids = {e["event.id"] for e in first["events"] + second["events"]}
    assert len(ids) == 3
    oldest = await api.get("/events", q="event.action:user-login", order="asc", size=1)
    assert oldest["events"][0]["event.id"] == second["events"][0]["event.id"]
    assert (await api.get("/events", q="event.action:user-login", until="2000-01-01T00:00:00Z"))["total"] == 0

    terms = await api.get("/events/aggregations", field="user.name", q="event.action:user-login")
    assert terms["total"] == 3 and terms["buckets"] == [
        {"key": "wangfang", "count": 2},
        {"key": "zhangwei", "count": 1},
    ]
    bad = await api.client.get("/events", params={"q": "user.name:(wangfang"}, headers=api.auth())
    assert bad.status_code == 400 and bad.json()["error"] == "bad_query" and bad.json()["field"] == "q"
    assert "position" in bad.json()["message"]["en"] and "查询语句无效" in bad.json()["message"]["zh"]
    for path, params in [
        ("/events/aggregations", {}),
        ("/events/aggregations", {"field": "user name"}),
        ("/events", {"cursor": "!!"}),
        ("/events", {"size": "100000"}),
        ("/events", {"order": "sideways"}),
    ]:
        response = await api.client.get(path, params=params, headers=api.auth())
        assert response.status_code == 400, (path, params, response.text)
