"""`onegate soc rules list|test|import`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from onegate.cli import app
from soc.stores.sqlite import SqliteEventStore
from tests.soc.test_sigma import ADMIN_FAILURE

runner = CliRunner()


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_list_shows_the_builtin_rules_as_the_site_runs_them_and_the_sigma_folder(tmp_path: Path) -> None:
    sigma = tmp_path / "sigma"
    sigma.mkdir()
    (sigma / "admin.yml").write_text(ADMIN_FAILURE)
    (sigma / "broken.yml").write_text("title: x\ndetection: [unclosed\n")
    env = {
        "ONEGATE_SOC__RULE_PARAMS": json.dumps({"onegate.brute-force": {"threshold": 20}}),
        "ONEGATE_SOC__RULES_DISABLED": json.dumps(["onegate.first-seen-device"]),
        "ONEGATE_SOC__SIGMA_DIR": str(sigma),
    }
    code, out, _ = _invoke("soc", "rules", "list", "--data-dir", str(tmp_path), "--json", env=env)
    assert code == 0
    listed = json.loads(out)
    rules = {rule["id"]: rule for rule in listed["rules"]}
    builtin = [rule for rule in listed["rules"] if rule["kind"] == "streaming"]
    assert len(builtin) == 15
    assert rules["onegate.brute-force"]["params"] == {"threshold": 20, "window_s": 300}
    assert rules["onegate.first-seen-device"]["enabled"] is False
    [sigma_rule] = [rule for rule in listed["rules"] if rule["kind"] == "sigma"]
    assert sigma_rule["technique"] == "T1110.001" and "sqlite" in sigma_rule["queries"]
    assert len(listed["errors"]) == 1 and "broken.yml" in listed["errors"][0]

    code, out, _ = _invoke("soc", "rules", "list", "--data-dir", str(tmp_path), env=env)
    assert code == 0 and "单一账号暴力破解 / Brute force on one account" in out


def test_test_compiles_a_rule_and_runs_it_over_recent_events(tmp_path: Path) -> None:
    now = datetime.now(UTC)

    def doc(n: int, user: str, outcome: str) -> dict[str, object]:
        return {
            "@timestamp": (now - timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
            "event.id": f"e{n}",
            "event.dataset": "onegate.idp",
            "event.category": ["authentication"],
            "event.action": "user-login",
            "event.outcome": outcome,
            "user.name": user,
        }

    async def fill() -> None:
        (tmp_path / "soc").mkdir()
        store = SqliteEventStore(tmp_path / "soc" / "events.db")
        await store.write(
            [
                doc(1, "admin-li", "failure"),
                doc(2, "admin-li", "success"),
                doc(3, "zhangwei", "failure"),
                doc(60 * 30, "admin-wang", "failure"),
            ]
        )
        await store.close()

    asyncio.run(fill())
    rule = tmp_path / "admin.yml"
    rule.write_text(ADMIN_FAILURE)
    code, out, _ = _invoke(
        "soc", "rules", "test", str(rule), "--since", "1h", "--data-dir", str(tmp_path), "--json"
    )
    assert code == 0, out
    [result] = json.loads(out)["rules"]
    assert result["matches"] == 1 and result["first"][0]["user.name"] == "admin-li"
    code, out, _ = _invoke("soc", "rules", "test", str(rule), "--since", "2d", "--data-dir", str(tmp_path))
    assert code == 0 and "matches in the last 2d / 最近 2d 命中: 2" in out and "sqlite:" in out
    code, _, err = _invoke("soc", "rules", "test", str(rule), "--since", "soon", "--data-dir", str(tmp_path))
    assert code == 2 and "--since" in err


def test_import_checks_then_copies(tmp_path: Path) -> None:
    sigma = tmp_path / "sigma"
    env = {"ONEGATE_SOC__SIGMA_DIR": str(sigma)}
    good = tmp_path / "admin.yml"
    good.write_text(ADMIN_FAILURE)
    bad = tmp_path / "bad.yml"
    bad.write_text(ADMIN_FAILURE.replace("startswith", "beginswith"))
    code, _, err = _invoke("soc", "rules", "import", str(bad), "--data-dir", str(tmp_path), env=env)
    assert code == 1 and "bad.yml" in err and not sigma.exists()
    code, out, _ = _invoke("soc", "rules", "import", str(good), "--data-dir", str(tmp_path), env=env)
    assert code == 0 and "imported" in out and (sigma / "admin.yml").read_text() == ADMIN_FAILURE
    code, _, err = _invoke("soc", "rules", "import", str(good), "--data-dir", str(tmp_path), env=env)
    assert code == 2 and "--force" in err
    code, _, _ = _invoke("soc", "rules", "import", str(good), "--force", "--data-dir", str(tmp_path), env=env)
    assert code == 0
    code, _, err = _invoke("soc", "rules", "import", str(good), "--data-dir", str(tmp_path))
    assert code == 2 and "soc.sigma_dir" in err
