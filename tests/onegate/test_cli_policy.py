"""`onegate policy ...` as an operator runs it: check, compile, explain, test, simulate, and the
versions of the active bundle (apply, history, diff, show, rollback)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.events import Category, Event, Outcome
from onegate import demo_data
from tests.onegate.conftest import Run

POLICIES = Path(demo_data.__file__).parent / "policies"
DEMO = str(POLICIES / "demo.yaml")

GOOD = """apps:
  console:
    hosts: [admin.localhost]
    rules:
      - {id: admins, effect: allow, subjects: {groups: [sys-admins, sec-admins]}}
      - {id: keys-mfa, effect: step_up, paths: [/keys], acr: mfa}
"""


@pytest.fixture
def initialised(onegate: Run, data_dir: Path) -> Path:
    result = onegate("init", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return data_dir


def test_check_reports_lines_and_exit_status(onegate: Run, tmp_path: Path) -> None:
    ok = onegate("policy", "check", "--offline", DEMO)
    assert ok.returncode == 0, ok.stderr
    assert "3 application(s), 9 rule(s); 0 error(s)" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("apps:\n  hr:\n    rules:\n      - id: x\n        effect: permit\n        group: [a]\n")
    result = onegate("policy", "check", "--offline", str(bad))
    assert result.returncode == 1
    assert (
        f"{bad}:5: error: bad_effect [x]" in result.stderr and f"{bad}:6: error: unknown_key" in result.stderr
    )
    assert "effect 须为" in result.stderr and "Traceback" not in result.stderr


def test_check_against_the_directory(onegate: Run, initialised: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert onegate("policy", "check", str(good), "--data-dir", str(initialised)).returncode == 0
    typo = tmp_path / "typo.yaml"
    typo.write_text(GOOD.replace("sec-admins", "sec-admin"))
    result = onegate("policy", "check", str(typo), "--data-dir", str(initialised), "--json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert [(f["code"], f["line"], f["rule_id"]) for f in findings] == [("unknown_group", 5, "admins")]


def test_compile_explain_and_test(onegate: Run, tmp_path: Path) -> None:
    compiled = json.loads(onegate("policy", "compile", DEMO, "--json").stdout)
    assert [a["app"] for a in compiled["apps"]] == ["grid", "hr", "permits"]
    assert compiled["timezone"] == "Asia/Shanghai"

    explained = onegate(
        "policy",
        "explain",
        DEMO,
        "--app",
        "hr",
        "--path",
        "/%61dmin/users",
        "--user",
        "wangfang",
        "--group",
        "hr-admins",
        "--department",
        "hrss",
        "--acr",
        "mfa",
        "--json",
    )
    assert explained.returncode == 0, explained.stderr
    answer = json.loads(explained.stdout)
    assert answer["effect"] == "step_up" and answer["obligations"]["acr_values"] == "urn:onegate:acr:phr"
    assert "hr-admin-passkey" in answer["text_zh"]
    refused = onegate("policy", "explain", DEMO, "--app", "hr", "--path", "/a%2fb")
    assert refused.returncode == 2 and "encoded_separator" in refused.stderr

    passed = onegate("policy", "test", DEMO, str(POLICIES / "demo_tests.yaml"))
    assert passed.returncode == 0 and "10 passed, 0 failed" in passed.stdout
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "cases:\n  - name: wrong\n    given: {app: hr, user: x, path: /}\n    expect: {effect: allow}\n"
    )
    failed = onegate("policy", "test", DEMO, str(failing))
    assert failed.returncode == 1 and f"FAIL {failing}:2 wrong" in failed.stdout


def test_simulate_from_the_command_line(onegate: Run, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    events = tmp_path / "access.ndjson"
    documents = [
        Event(
            action="http-request",
            category=Category.WEB,
            outcome=Outcome.FAILURE,
            timestamp=now,
            fields={
                "user.name": "zhangwei",
                "onegate.groups": ["civil-servants", "hr-staff"],
                "onegate.departments": ["hrss", "city"],
                "onegate.app": "grid",
                "url.path": "/dispatch",
                "http.request.method": "POST",
                "source.ip": "10.1.2.3",
            },
        ).to_ecs()
    ]
    events.write_text("\n".join(json.dumps(d) for d in documents) + "\n")
    proposed = tmp_path / "proposed.yaml"
    widened = "subjects: {groups: [ops-duty, hr-staff]}"
    proposed.write_text(Path(DEMO).read_text().replace("subjects: {groups: [ops-duty]}", widened))
    replay = ["policy", "simulate", str(proposed), "--events", str(events)]
    result = onegate(*replay, "--baseline", DEMO, "--since", "1d", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gains"]["by_user_app"] == [{"user": "zhangwei", "app": "grid", "requests": 1}]
    assert report["losses"]["requests"] == 0
    text = onegate(*replay, "--baseline", DEMO)
    assert "1 request(s) of 1 user(s) would gain access" in text.stdout
    no_active = onegate(*replay, "--data-dir", str(tmp_path / "d"))
    assert no_active.returncode == 2 and "onegate:" in no_active.stderr


def test_apply_history_diff_show_rollback(onegate: Run, initialised: Path, tmp_path: Path) -> None:
    d = ["--data-dir", str(initialised)]
    first = tmp_path / "v1.yaml"
    first.write_text(GOOD)
    applied = onegate("policy", "apply", str(first), "-m", "first", *d)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("active: v1 ")
    second = tmp_path / "v2.yaml"
    second.write_text(GOOD + "      - {id: no-audit, effect: deny, paths: [/audit]}\n")
    assert onegate("policy", "apply", str(second), "-m", "close /audit", *d).returncode == 0

    again = onegate("policy", "apply", str(first), *d, "--author", "x")
    assert again.returncode == 0  # the text of v1 again: a new version, v3
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("sys-admins", "sys-admin"))
    refused = onegate("policy", "apply", str(bad), *d)
    assert refused.returncode == 1 and "unknown_group" in refused.stderr and "未变" in refused.stderr

    history = json.loads(onegate("policy", "history", "--json", *d).stdout)
    assert [(v["version"], v["action"], v["comment"]) for v in history] == [
        (3, "apply", ""),
        (2, "apply", "close /audit"),
        (1, "apply", "first"),
    ]
    assert history[2]["author"].startswith("cli:") and history[0]["author"] == "x"
    diff = onegate("policy", "diff", "1", "2", *d).stdout
    assert diff.startswith("--- v1\n+++ v2\n") and "+      - {id: no-audit" in diff
    rolled = onegate("policy", "rollback", "2", *d)
    assert rolled.returncode == 0 and "active: v4 (the text of v2)" in rolled.stdout
    assert onegate("policy", "show", *d).stdout == second.read_text()
    missing = onegate("policy", "show", "99", *d)
    assert missing.returncode == 2 and "no policy version 99" in missing.stderr
