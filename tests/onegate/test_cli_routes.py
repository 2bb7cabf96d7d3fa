"""`onegate gateway routes ...` and `onegate admin api-keys ...` as an operator runs them, in-process
(typer's CliRunner) on a data dir made by `onegate init`, with a configuration file that routes
one application (read-only for these commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from onegate.cli import app as onegate_app

CONFIG = """
gateway:
  routes:
    - app: hr
      hosts: [hr.example.gov]
      upstream: http://10.2.0.15:8080
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    where = tmp_path / "data"
    init = CliRunner().invoke(onegate_app, ["init", "--data-dir", str(where)])
    assert init.exit_code == 0, init.output
    (tmp_path / "onegate.yaml").write_text(CONFIG, encoding="utf-8")
    return where


def onegate(data_dir: Path, *args: str) -> Result:
    config = data_dir.parent / "onegate.yaml"
    result = CliRunner().invoke(onegate_app, [*args, "--data-dir", str(data_dir), "--config", str(config)])
    # Never a traceback: every ending is an exit status.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_add_show_update_list_remove_and_history(data_dir: Path) -> None:
    added = as_json(
        onegate(
            data_dir,
            "gateway",
            "routes",
            "add",
            "permits",
            "--host",
            "permits.example.gov",
            "--host",
            "xuke.example.gov",
            "--upstream",
            "http://10.2.0.16:8080",
            "--read-timeout",
            "120",
            "-m",
            "new permits system",
            "--json",
        )
    )
    assert added["hosts"] == ["permits.example.gov", "xuke.example.gov"] and added["read_timeout"] == 120.0
    assert added["updated_by"].startswith("cli:") and added["revision"] == 1

    human = onegate(data_dir, "gateway", "routes", "show", "permits")
    assert human.exit_code == 0 and "permits.example.gov, xuke.example.gov" in human.stdout
    assert "read 120 s" in human.stdout

    # update changes what is given and keeps the rest.
    updated = as_json(
        onegate(data_dir, "gateway", "routes", "update", "permits", "--disable", "--no-upstream", "--json")
    )
    assert updated["enabled"] is False and updated["upstream"] is None and updated["read_timeout"] == 120.0
    assert updated["hosts"] == ["permits.example.gov", "xuke.example.gov"] and updated["revision"] == 2

    listed = as_json(onegate(data_dir, "gateway", "routes", "list", "--json"))
    assert listed["revision"] == 2
    assert [(r["app"], r["source"], r["enabled"]) for r in listed["routes"]] == [
        ("hr", "config", True),
        ("permits", "api", False),
    ]
    table = onegate(data_dir, "gateway", "routes", "list")
    assert "(forward-auth)" in table.stdout and "config" in table.stdout

    config_route = as_json(onegate(data_dir, "gateway", "routes", "show", "hr", "--json"))
    assert config_route["source"] == "config" and config_route["upstream"] == "http://10.2.0.15:8080"

    removed = onegate(data_dir, "gateway", "routes", "remove", "permits", "-m", "moved")
    assert removed.exit_code == 0 and "removed route permits" in removed.stdout

    history = as_json(onegate(data_dir, "gateway", "routes", "history", "--json"))
    assert [(c["revision"], c["action"], c["comment"]) for c in history] == [
        (3, "remove", "moved"),
        (2, "update", ""),
        (1, "create", "new permits system"),
    ]
    assert history[1]["changed"] == ["upstream", "enabled"]
    one = onegate(data_dir, "gateway", "routes", "history", "permits", "--limit", "1")
    assert one.exit_code == 0 and "remove" in one.stdout and "create" not in one.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "bad", "--host", "bad.example.gov:80"], "is not a host name"),
        (["add", "bad", "--host", "bad.example.gov", "--upstream", "ftp://x"], "upstream"),
        (["add", "hr", "--host", "hr2.example.gov"], "configuration"),
        (["add", "reports", "--host", "hr.example.gov", "--path-prefix", "/reports"], "配置文件"),
        (["update", "hr", "--read-timeout", "5"], "configuration"),
        (["update", "nothing", "--read-timeout", "5"], "no added route"),
        (["remove", "hr"], "configuration"),
        (["remove", "nothing"], "no added route"),
        (["show", "nothing"], "no added route"),
    ],
)
def test_refusals_are_one_line_and_exit_1(data_dir: Path, args: list[str], says: str) -> None:
    result = onegate(data_dir, "gateway", "routes", *args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: ") and says in lines[0]
    assert "Traceback" not in result.output


def test_usage_problems_exit_2(data_dir: Path, tmp_path: Path) -> None:
    no_host = onegate(data_dir, "gateway", "routes", "add", "permits")
    assert no_host.exit_code == 2 and "--host" in no_host.stderr
    both = onegate(data_dir, "gateway", "routes", "update", "x", "--upstream", "http://a", "--no-upstream")
    assert both.exit_code == 2
    nowhere = CliRunner().invoke(
        onegate_app, ["gateway", "routes", "list", "--data-dir", str(tmp_path / "none")]
    )
    assert nowhere.exit_code == 2 and "onegate init" in nowhere.stderr


def test_api_keys_create_list_revoke(data_dir: Path) -> None:
    created = as_json(onegate(data_dir, "admin", "api-keys", "create", "--name", "ci-deploy", "--json"))
    assert created["key"].startswith("oga_" + created["id"] + "_") and created["state"] == "active"
    human = onegate(data_dir, "admin", "api-keys", "create", "--name", "ops", "--expires-days", "30")
    assert human.exit_code == 0 and "shown once" in human.stdout and "oga_" in human.stdout

    listed = as_json(onegate(data_dir, "admin", "api-keys", "list", "--json"))
    assert [(k["name"], k["state"]) for k in listed] == [("ci-deploy", "active"), ("ops", "active")]
    assert listed[1]["expires_at"] is not None
    assert all("key" not in k and "digest" not in k for k in listed)  # never the key again

    revoked = as_json(onegate(data_dir, "admin", "api-keys", "revoke", "ci-deploy", "--json"))
    assert revoked["state"] == "revoked" and revoked["revoked_by"].startswith("cli:")
    again = onegate(data_dir, "admin", "api-keys", "revoke", created["id"])
    assert again.exit_code == 0  # revoking a revoked key changes nothing
    table = onegate(data_dir, "admin", "api-keys", "list")
    assert "revoked" in table.stdout and created["key"] not in table.stdout

    unknown = onegate(data_dir, "admin", "api-keys", "revoke", "nobody")
    assert unknown.exit_code == 2 and "no key" in unknown.stderr
    empty = onegate(data_dir, "admin", "api-keys", "create", "--name", " ")
    assert empty.exit_code == 2 and "name" in empty.stderr
