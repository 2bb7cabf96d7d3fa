"""The SOC against a scripted attack (issue 7, acceptance 1), on one real ``onegate serve --role
all`` process: the IdP, the gateway and the SOC, with HR behind the gateway.

From one address (203.0.113.66, reaching the server through a trusted proxy that says so in
X-Forwarded-For) an attacker sprays ten existing accounts, brute-forces 王芳's, signs in as her
through HR, then pulls page after page. The SOC raises the expected alerts from the real IdP and
gateway events and links them into one incident (STORIES.md, "A day", step 4). The analyst's
"revoke sessions" response, sent through the SOC API, makes the attacker's very next request go
back to the sign-in page; "block address" then has the gateway refuse the address outright,
while everyone else still gets through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.browser import Browser
from tests.e2e.conftest import IdpUser, LoopbackAdapter
from tests.gateway.stack import GatewayStack
from tests.gateway.upstreams import UpstreamServer

pytestmark = pytest.mark.e2e

POLICY = """
version: 1
apps:
  hr:
    hosts: [hr.localhost]
    rules:
      - {id: hr-staff, effect: allow, subjects: {departments: [hrss]}}
"""
ATTACKER = "203.0.113.66"
EXPECTED = {
    "onegate.password-spraying",
    "onegate.brute-force",
    "onegate.failures-then-success",
    "onegate.success-after-attack",
    "onegate.mass-download",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    root = tmp_path_factory.mktemp("soc-scenario")
    settings = {
        # Twenty failures must not lock 王芳's account before the attacker gets in: the site
        # chose a lockout threshold above it (the detections still see every attempt).
        "ONEGATE_IDP__LOCKOUT_THRESHOLD": "25",
        # "Mass download" after twenty pages, so the test stays short.
        "ONEGATE_SOC__RULE_PARAMS": json.dumps({"onegate.mass-download": {"requests": 20}}),
        # The test's requests come from loopback: loopback is the proxy that names the client.
        "ONEGATE_SERVER__TRUSTED_PROXIES": json.dumps(["127.0.0.1/32"]),
    }
    with UpstreamServer() as hr:
        server = GatewayStack(root, {"hr": ("hr", hr.url)}, policy=POLICY, settings=settings).start()
        try:
            yield server
        finally:
            server.stop()


def _staff(stack: GatewayStack, tmp: Path) -> list[str]:
    names = [f"staff{i:02d}" for i in range(10)]
    csv = tmp / "staff.csv"
    csv.write_text(
        "username,display_name,email,phone,department,groups\n"
        + "".join(f"{n},职员{i},,,hrss,\n" for i, n in enumerate(names)),
        encoding="utf-8",
    )
    stack.cli("user", "import", str(csv), "--passwords-file", str(tmp / "passwords.txt"), as_json=False)
    return names


def _attacker(stack: GatewayStack) -> Browser:
    """A browser whose requests reach the server as from the attacker's address."""
    browser = stack.browser()
    browser.http.headers["X-Forwarded-For"] = ATTACKER
    return browser


def _fail_sign_in(stack: GatewayStack, username: str) -> None:
    forms = _attacker(stack)
    try:
        forms.get(stack.url("/login"))
        page = forms.submit(forms.form("password"), {"username": username, "password": "Spring2026!"})
        assert urlsplit(page.url).path == "/login", f"{username}: {page.url}"
    finally:
        forms.http.close()


class SocApi:
    def __init__(self, stack: GatewayStack, key: str) -> None:
        self.base = f"http://soc.localhost:{stack.port}/api/soc/v1"
        self.http = requests.Session()
        self.http.mount("http://", LoopbackAdapter())
        self.http.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(self.base + path, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.http.post(self.base + path, json=body, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response.json()


def test_a_scripted_attack_becomes_one_incident_and_revoking_sessions_stops_the_attacker(
    stack: GatewayStack, tmp_path: Path
) -> None:
    wangfang: IdpUser = stack.add_user("wangfang", name="王芳", department="hrss", groups=["hr-staff"])
    staff = _staff(stack, tmp_path)
    key = stack.cli("admin", "api-keys", "create", "--name", "soc-analyst")["key"]
    api = SocApi(stack, key)

    for name in staff:  # spraying from one address
        _fail_sign_in(stack, name)
    for _ in range(10):  # brute force on one account
        _fail_sign_in(stack, "wangfang")
    attacker = _attacker(stack)  # then it works
    page = attacker.get(stack.app_url("hr", "/"))
    page = attacker.submit(attacker.form("password"), {"username": "wangfang", "password": wangfang.password})
    assert page.status_code == 200 and urlsplit(page.url).hostname == "hr.localhost"
    for n in range(20):  # and the attacker pulls page after page
        assert attacker.get(stack.app_url("hr", f"/records/{n}")).status_code == 200

    deadline = time.monotonic() + 30
    while True:
        alerts = api.get("/alerts", limit=100)["alerts"]
        # Raised and linked (triage stores the alert, then its incident).
        linked = {a["rule"]["id"] for a in alerts if a["incident_id"] is not None}
        if linked >= EXPECTED or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    raised = {a["rule"]["id"]: a for a in alerts}
    assert set(raised) >= EXPECTED, sorted(raised)
    incident_ids = {raised[rule]["incident_id"] for rule in EXPECTED}
    assert len(incident_ids) == 1 and None not in incident_ids
    [incident_id] = incident_ids
    detail = api.get(f"/incidents/{incident_id}")
    incident = detail["incident"]
    assert incident["severity"] == "critical"
    assert "user.name=wangfang" in incident["entities"]
    assert f"source.ip={ATTACKER}" in incident["entities"]
    assert {alert["rule"]["id"] for alert in detail["alerts"]} >= EXPECTED

    done = api.post(
        "/responses",
        {
            "action": "revoke-sessions",
            "target": "wangfang",
            "incident_id": incident_id,
            "reason": "account taken over",
        },
    )
    assert done["status"] == "done", done

    # The attacker's next request: back to the sign-in page, not HR.
    after = attacker.get(stack.app_url("hr", "/records/21"))
    assert urlsplit(after.url).hostname == "idp.localhost", after.url
    assert api.get(f"/incidents/{incident_id}")["incident"]["responded_at"] is not None

    blocked = api.post(
        "/responses",
        {"action": "block-address", "target": ATTACKER, "incident_id": incident_id, "reason": "spraying"},
    )
    assert blocked["status"] == "done", blocked
    time.sleep(1.1)  # every gateway process rereads the blocked addresses within a second
    refused = attacker.get(stack.app_url("hr", "/records/22"))
    assert refused.status_code == 403 and "安全运营中心封禁" in refused.text
    assert urlsplit(refused.url).hostname == "hr.localhost"  # refused at the gateway: no sign-in offered
    bystander = stack.browser().get(stack.app_url("hr", "/"))
    assert urlsplit(bystander.url).hostname == "idp.localhost"  # others are asked to sign in as usual
