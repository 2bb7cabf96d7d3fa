"""`onegate policy apply|history|show|diff|rollback` as an operator runs them, on a data dir made
by `onegate init` whose directory knows a few groups, departments and people.

The commands run in-process through typer's CliRunner, on a `policy` sub-app that has only
them (``register``), so the tests do not depend on how onegate/cli.py wires the rest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import delete
from typer.testing import CliRunner, Result

from core.db import create_engine, session_factory
from idp.directory.models import Group
from idp.directory.services import Directory
from onegate.cli import app as onegate_app
from onegate.cli_policy_store import register

V1 = """apps:
  hr:
    rules:
      - {id: staff, effect: allow, subjects: {groups: [hr-staff], users: [zhangwei]}}
"""
V2 = V1 + "      - {id: no-admin, effect: deny, paths: [/admin]}\n"


def _app() -> typer.Typer:
    root = typer.Typer()
    policy_app = typer.Typer(no_args_is_help=True)
    register(policy_app)
    root.add_typer(policy_app, name="policy")
    return root


APP = _app()


def _db(data_dir: Path, work: Callable[[Any], Awaitable[None]]) -> None:
    async def run() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'onegate.db'}")
        try:
            await work(session_factory(engine))
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An initialised data dir whose directory has hr-staff, the hrss department and zhangwei."""
    where = tmp_path / "data"
    init = CliRunner().invoke(onegate_app, ["init", "--data-dir", str(where)])
    assert init.exit_code == 0, init.output

    async def seed(sessions: Any) -> None:
        directory = Directory(sessions)
        await directory.add_department("hrss", "市人力资源和社会保障局")
        await directory.ensure_group("hr-staff")
        await directory.add_user(username="zhangwei", display_name="张伟", password_hash=None)

    _db(where, seed)
    return where


def policy(data_dir: Path, *args: str) -> Result:
    result = CliRunner().invoke(APP, ["policy", *args, "--data-dir", str(data_dir)])
    # Never a traceback: every ending is an exit status.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_apply_history_show_diff_rollback(data_dir: Path, tmp_path: Path) -> None:
    first = policy(data_dir, "apply", write(tmp_path, "v1.yaml", V1), "-m", "first")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("active: v1 by cli:") and "(digest " in first.stdout

    # The same text again: nothing stored, said so.
    same = policy(data_dir, "apply", write(tmp_path, "again.yaml", V1), "--json")
    assert same.exit_code == 0
    assert (json.loads(same.stdout)["version"], json.loads(same.stdout)["changed"]) == (1, False)
    assert "unchanged: v1" in policy(data_dir, "apply", str(tmp_path / "v1.yaml")).stdout

    second = policy(
        data_dir, "apply", write(tmp_path, "v2.yaml", V2), "--comment", "close /admin", "--author", "王芳"
    )
    assert second.exit_code == 0, second.output
    # A warning is printed, and does not block.
    assert (
        "v2.yaml:4: warning: overlap [staff]" in second.stdout
        and "active: v2 by 王芳 (digest " in second.stdout
    )

    diff = policy(data_dir, "diff", "1", "2")
    assert diff.exit_code == 0 and diff.stdout == (
        "--- v1\n+++ v2\n@@ -2,3 +2,4 @@\n   hr:\n     rules:\n"
        "       - {id: staff, effect: allow, subjects: {groups: [hr-staff], users: [zhangwei]}}\n"
        "+      - {id: no-admin, effect: deny, paths: [/admin]}\n"
    )
    assert policy(data_dir, "show").stdout == V2
    assert policy(data_dir, "show", "1").stdout == V1

    rolled = policy(data_dir, "rollback", "1", "-m", "admins need /admin back", "--json")
    assert rolled.exit_code == 0, rolled.output
    summary = json.loads(rolled.stdout)
    assert (summary["version"], summary["action"], summary["based_on"], summary["changed"]) == (
        3,
        "rollback",
        1,
        True,
    )
    assert policy(data_dir, "show").stdout == V1
    assert policy(data_dir, "diff", "1", "3").stdout == ""

    history = json.loads(policy(data_dir, "history", "--json").stdout)
    assert [(v["version"], v["action"], v["author"], v["comment"], v["active"]) for v in history] == [
        (3, "rollback", history[0]["author"], "admins need /admin back", True),
        (2, "apply", "王芳", "close /admin", False),
        (1, "apply", history[2]["author"], "first", False),
    ]
    assert history[0]["author"].startswith("cli:") and history[2]["author"].startswith("cli:")
    assert history[0]["created_at"] >= history[2]["created_at"]
    text = policy(data_dir, "history", "--limit", "2").stdout.splitlines()
    assert text[0].split() == ["version", "time", "(UTC)", "author", "action", "digest", "comment"]
    assert text[1].startswith("v3 *") and "rollback v1" in text[1] and text[2].startswith("v2 ")
    assert "王芳" in text[2] and len(text) == 3

    again = policy(data_dir, "rollback", "2")
    assert again.exit_code == 0 and again.stdout.splitlines()[-1].startswith(
        "active: v4 (the text of v2) by cli:"
    )
    assert "unchanged: v4" in policy(data_dir, "rollback", "2").stdout  # already the active text


def test_a_rejected_bundle_prints_every_finding_and_stores_nothing(data_dir: Path, tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.yaml",
        "apps:\n  hr:\n    rules:\n"
        "      - {id: a, effect: allow, subjects: {groups: [hr-staf]}}\n"
        "      - {id: b, effect: allow, subjects: {users: [lisi], departments: [hrs]}}\n",
    )
    refused = policy(data_dir, "apply", bad)
    assert refused.exit_code == 1 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert lines == [
        f"{bad}:4: error: unknown_group [a]: unknown group 'hr-staf' / 未知的用户组 'hr-staf'",
        f"{bad}:5: error: unknown_user [b]: unknown user 'lisi' / 未知的用户 'lisi'",
        f"{bad}:5: error: unknown_department [b]: unknown department 'hrs' / 未知的部门 'hrs'",
        "3 error(s); rejected: the active policy is unchanged / 已拒绝：生效策略未变",
    ]
    broken = policy(data_dir, "apply", write(tmp_path, "broken.yaml", "apps: [\n"))
    assert broken.exit_code == 1 and broken.stderr.splitlines()[0].startswith(
        f"{tmp_path}/broken.yaml:2: error: yaml"
    )
    assert "the bundle does not load; the active policy is unchanged" in broken.stderr

    assert policy(data_dir, "history").stdout == "no policy has been applied yet / 尚未应用任何策略\n"
    assert policy(data_dir, "history", "--json").stdout == "[]\n"
    nothing = policy(data_dir, "show")
    assert nothing.exit_code == 2 and "no policy has been applied yet" in nothing.stderr

    # With a version active, a refused apply leaves it active.
    assert policy(data_dir, "apply", write(tmp_path, "v1.yaml", V1)).exit_code == 0
    assert policy(data_dir, "apply", bad).exit_code == 1
    assert [v["version"] for v in json.loads(policy(data_dir, "history", "--json").stdout)] == [1]
    assert policy(data_dir, "show").stdout == V1


def test_a_rollback_to_a_version_that_no_longer_passes_is_refused(data_dir: Path, tmp_path: Path) -> None:
    assert policy(data_dir, "apply", write(tmp_path, "v1.yaml", V1)).exit_code == 0
    v2 = write(tmp_path, "v2.yaml", "apps:\n  hr:\n    rules:\n      - {id: all, effect: allow}\n")
    assert policy(data_dir, "apply", v2).exit_code == 0

    async def remove_group(sessions: Any) -> None:
        async with sessions() as s, s.begin():
            await s.execute(delete(Group).where(Group.name == "hr-staff"))

    _db(data_dir, remove_group)
    refused = policy(data_dir, "rollback", "1")
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [
        "v1:4: error: unknown_group [staff]: unknown group 'hr-staff' / 未知的用户组 'hr-staff'",
        "1 error(s); v1 no longer passes check; the active policy is unchanged / "
        "v1 已无法通过检查，生效策略未变",
    ]
    assert json.loads(policy(data_dir, "history", "--json").stdout)[0]["version"] == 2


def test_a_folder_is_one_version(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "hr.yaml").write_text(V1, encoding="utf-8")
    (folder / "wiki.yaml").write_text(
        "apps:\n  wiki:\n    rules:\n      - {id: wiki, effect: allow, subjects: {departments: [hrs]}}\n",
        encoding="utf-8",
    )
    refused = policy(data_dir, "apply", str(folder))
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"{folder / 'wiki.yaml'}:4: error: unknown_department [wiki]")

    (folder / "wiki.yaml").write_text((folder / "wiki.yaml").read_text().replace("hrs]", "hrss]"))
    applied = policy(data_dir, "apply", str(folder))
    assert applied.exit_code == 0, applied.output
    shown = policy(data_dir, "show").stdout
    assert (
        shown.startswith(f"--- # {folder / 'hr.yaml'}\napps:\n  hr:")
        and f"--- # {folder / 'wiki.yaml'}" in shown
    )


def test_problems_are_one_line(data_dir: Path, tmp_path: Path) -> None:
    for args, message in (
        (("show", "99"), "no policy version 99"),
        (("diff", "1", "99"), "no policy version 1"),
        (("rollback", "99"), "no policy version 99"),
        (("apply", str(tmp_path / "missing.yaml")), "no such file or folder"),
        (("history", "--limit", "0"), "Invalid value for '--limit'"),
    ):
        result = policy(data_dir, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    for command in (["history"], ["show"], ["apply", write(tmp_path, "v1.yaml", V1)]):
        empty = policy(tmp_path / "nothing-here", *command)
        assert empty.exit_code == 2 and empty.stderr.startswith("onegate: no OneGate data dir at ")
        assert not (tmp_path / "nothing-here" / "onegate.db").exists()
