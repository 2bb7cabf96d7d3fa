"""`onegate user ...` as an operator runs it: a real subprocess on a real data dir."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.db import create_engine, session_factory
from core.events import Event
from idp.directory.services import Directory
from onegate import runtime as onegate_runtime
from onegate.cli import app
from tests.onegate.conftest import ONEGATE, Run, clean_env

STAFF = """username,display_name,email,phone,department,groups
zhangwei,张伟,zhangwei@example.gov.cn,13800138000,hrss,hr-staff
wangfang,王芳,wangfang@example.gov.cn,,hrss,hr-staff;hr-admins
Li Na,李娜,,,,
liuyang,刘洋,,,nowhere,
"""


SETUP = (
    ("init",),
    ("user", "departments", "add", "city", "市政府", "--name-en", "City government"),
    ("user", "departments", "add", "hrss", "市人力资源和社会保障局", "--parent", "city"),
    ("user", "groups", "add", "hr-staff", "--description", "人社局 staff"),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Initialised once per module: the city's HR department and an hr-staff group."""
    data_dir = tmp_path_factory.mktemp("template") / "data"
    for args in SETUP:
        result = subprocess.run(
            [*ONEGATE, *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    return data_dir


@pytest.fixture
def ready(template: Path, data_dir: Path) -> Path:
    """A private copy of the template data dir (database and keys), as if just initialised."""
    shutil.copytree(template, data_dir)
    return data_dir


@pytest.fixture(scope="module")
def shared(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy for the tests whose commands all fail (and so change nothing)."""
    data_dir = tmp_path_factory.mktemp("shared") / "data"
    shutil.copytree(template, data_dir)
    return data_dir


def user(onegate: Run, data_dir: Path, *args: str) -> Any:
    return onegate("user", *args, "--data-dir", str(data_dir))


def as_json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _stored(db: Path, username: str, password: str | None = None) -> tuple[Any, bool]:
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        directory = Directory(session_factory(engine))
        found = await directory.get_user(username)
        assert found is not None
        verified = password is not None and await directory.verify_password(found, password)
        return found, verified
    finally:
        await engine.dispose()


def stored(data_dir: Path, username: str, password: str | None = None) -> tuple[Any, bool]:
    return asyncio.run(_stored(data_dir / "onegate.db", username, password))


def one_line_error(result: Any) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onegate: ")
    return lines[0]


def test_add_show_list_with_a_chinese_name(onegate: Run, ready: Path) -> None:
    created = as_json(
        user(
            onegate,
            ready,
            "add",
            "ZhangWei",
            "--name",
            "张伟",
            "--email",
            "zhangwei@example.gov.cn",
            "--department",
            "hrss",
            "--group",
            "hr-staff",
            "--json",
        )
    )
    assert created["username"] == "zhangwei" and created["display_name"] == "张伟"
    password = created["password"]
    row, verified = stored(ready, "zhangwei", password)
    assert verified and row.must_change_password
    assert password.encode() not in (ready / "onegate.db").read_bytes()

    shown = as_json(user(onegate, ready, "show", "zhangwei", "--json"))
    assert shown["display_name"] == "张伟"
    assert shown["department_path"] == "市政府 / 市人力资源和社会保障局"
    assert (shown["department"], shown["department_name"]) == ("hrss", "市人力资源和社会保障局")
    assert shown["groups"] == ["hr-staff"]
    assert shown["status"] == "active" and shown["must_change_password"] is True
    assert password not in json.dumps(shown)

    listed = as_json(user(onegate, ready, "list", "--json"))
    assert [(u["username"], u["display_name"]) for u in listed] == [
        ("admin", "系统管理员"),
        ("zhangwei", "张伟"),
    ]
    assert [
        u["username"] for u in as_json(user(onegate, ready, "list", "--group", "hr-staff", "--json"))
    ] == ["zhangwei"]
    assert as_json(user(onegate, ready, "list", "--department", "city", "--json")) == []
    table = user(onegate, ready, "list")
    assert "张伟" in table.stdout and "hrss" in table.stdout
    human = user(onegate, ready, "show", "zhangwei")
    assert "市政府 / 市人力资源和社会保障局" in human.stdout and "张伟" in human.stdout


def test_add_prints_the_password_once_for_humans(onegate: Run, ready: Path) -> None:
    result = user(onegate, ready, "add", "wangfang", "--name", "王芳")
    assert result.returncode == 0, result.stderr
    assert "created user wangfang (王芳)" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "one-time password" in x)
    password = line.rsplit(" ", 1)[1]
    assert stored(ready, "wangfang", password)[1]
    assert password not in user(onegate, ready, "show", "wangfang").stdout


def test_lock_unlock_disable_enable(onegate: Run, ready: Path) -> None:
    assert user(onegate, ready, "add", "liuyang", "--name", "刘洋").returncode == 0
    steps = [
        ("lock", "locked", "active"),
        ("lock", "locked", "locked"),
        ("unlock", "active", "locked"),
        ("disable", "disabled", "active"),
        ("unlock", "disabled", "disabled"),  # unlock does not enable
        ("enable", "active", "disabled"),
    ]
    for command, status, previous in steps:
        result = as_json(user(onegate, ready, command, "liuyang", "--json"))
        assert (result["status"], result["previous_status"]) == (status, previous), command
    assert stored(ready, "liuyang")[0].status.value == "active"
    human = user(onegate, ready, "disable", "liuyang")
    assert human.stdout.strip() == "liuyang: disabled (was active)"


def test_reset_password(onegate: Run, ready: Path) -> None:
    first = as_json(user(onegate, ready, "add", "lina", "--name", "李娜", "--json"))["password"]
    second = as_json(user(onegate, ready, "reset-password", "lina", "--json"))
    assert second["username"] == "lina" and second["password"] != first
    row, verified = stored(ready, "lina", second["password"])
    assert verified and row.must_change_password
    assert not stored(ready, "lina", first)[1]


def test_import_end_to_end_from_an_excel_gb18030_file(onegate: Run, ready: Path, tmp_path: Path) -> None:
    source = tmp_path / "staff.csv"
    source.write_bytes(STAFF.encode("gb18030"))

    dry = user(onegate, ready, "import", str(source), "--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr  # bad rows were reported
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["encoding"] == "gb18030"
    assert report["created"] == ["zhangwei"]
    assert [(b["line"], b["username"]) for b in report["bad"]] == [
        (3, "wangfang"),
        (4, "Li Na"),
        (5, "liuyang"),
    ]
    assert "'hr-admins'" in report["bad"][0]["reason"]
    assert report["passwords"] == []
    assert [u["username"] for u in as_json(user(onegate, ready, "list", "--json"))] == ["admin"]

    passwords = tmp_path / "passwords.csv"
    real = user(onegate, ready, "import", str(source), "--create-groups", "--passwords-file", str(passwords))
    assert real.returncode == 1, real.stderr
    assert "line 4: bad row: invalid username 'Li Na'" in real.stdout
    assert "line 5: bad row: no department with code 'nowhere'" in real.stdout
    assert "group hr-admins created" in real.stdout
    assert "2 created, 0 updated, 0 unchanged, 2 bad row(s)" in real.stdout
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    lines = passwords.read_text("utf-8").splitlines()
    assert lines[0] == "username,password" and len(lines) == 3
    secrets = dict(line.split(",") for line in lines[1:])
    assert all(stored(ready, name, secret)[1] for name, secret in secrets.items())
    assert not any(secret in real.stdout for secret in secrets.values())

    shown = as_json(user(onegate, ready, "show", "wangfang", "--json"))
    assert shown["display_name"] == "王芳" and shown["groups"] == ["hr-admins", "hr-staff"]

    again = as_json_lenient(user(onegate, ready, "import", str(source), "--json"))
    assert again["created"] == [] and again["updated"] == {}
    assert again["unchanged"] == ["zhangwei", "wangfang"]
    assert again["passwords"] == []
    assert len(as_json(user(onegate, ready, "list", "--json"))) == 3


def as_json_lenient(result: Any) -> Any:
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_import_utf8_with_bom_prints_passwords_once(onegate: Run, ready: Path, tmp_path: Path) -> None:
    source = tmp_path / "staff.csv"
    source.write_bytes(
        b"\xef\xbb\xbfusername,display_name,department\nzhangwei,\xe5\xbc\xa0\xe4\xbc\x9f,hrss\n"
    )
    result = as_json(user(onegate, ready, "import", str(source), "--json"))
    assert result["encoding"] == "utf-8-sig" and result["bad"] == []
    [entry] = result["passwords"]
    assert entry["username"] == "zhangwei"
    assert stored(ready, "zhangwei", entry["password"])[1]
    assert as_json(user(onegate, ready, "show", "zhangwei", "--json"))["display_name"] == "张伟"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "Bad Name", "--name", "x"), "invalid username 'Bad Name'"),
        (("add", "admin", "--name", "又一个"), "user 'admin' already exists"),
        (
            ("add", "zhaolei", "--name", "赵磊", "--department", "nowhere"),
            "no department with code 'nowhere'",
        ),
        (("add", "zhaolei", "--name", "赵磊", "--email", "not-mail"), "invalid email 'not-mail'"),
        (("lock", "ghost"), "no user 'ghost'"),
        (("show", "ghost"), "no user 'ghost'"),
        (("reset-password", "ghost"), "no user 'ghost'"),
        (("list", "--status", "bogus"), "unknown status 'bogus'"),
        (("groups", "add-member", "nope", "admin"), "no group 'nope'"),
        (("groups", "add", "Bad Group!"), "invalid group name 'Bad Group!'"),
        (("departments", "add", "hrss", "重复"), "department 'hrss' already exists"),
        (("import", "/nonexistent/staff.csv"), "cannot read /nonexistent/staff.csv"),
    ],
)
def test_bad_input_gives_one_line(onegate: Run, shared: Path, args: tuple[str, ...], message: str) -> None:
    assert message in one_line_error(user(onegate, shared, *args))


def test_import_refuses_a_bad_header_and_an_existing_passwords_file(
    onegate: Run, ready: Path, tmp_path: Path
) -> None:
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("name,salary\n张伟,100\n", "utf-8")
    assert "unknown column 'name'" in one_line_error(user(onegate, ready, "import", str(bad_header)))

    source = tmp_path / "staff.csv"
    source.write_text("username,display_name\nzhangwei,张伟\n", "utf-8")
    existing = tmp_path / "passwords.csv"
    existing.write_text("keep me\n", "utf-8")
    error = one_line_error(user(onegate, ready, "import", str(source), "--passwords-file", str(existing)))
    assert "exists" in error
    assert existing.read_text("utf-8") == "keep me\n"
    # Nothing was imported: the passwords would have had nowhere to go.
    assert [u["username"] for u in as_json(user(onegate, ready, "list", "--json"))] == ["admin"]


def test_an_uninitialised_data_dir_is_one_line(onegate: Run, tmp_path: Path) -> None:
    assert "onegate init" in one_line_error(onegate("user", "list", "--data-dir", str(tmp_path / "empty")))


def test_groups_and_departments_commands(onegate: Run, ready: Path) -> None:
    assert user(onegate, ready, "add", "zhangwei", "--name", "张伟").returncode == 0
    added = user(onegate, ready, "groups", "add-member", "hr-staff", "zhangwei")
    assert added.stdout.strip() == "zhangwei added to group hr-staff"
    members = as_json(user(onegate, ready, "groups", "members", "hr-staff", "--json"))
    assert members == [{"username": "zhangwei", "display_name": "张伟", "status": "active"}]
    groups = {g["name"]: g["members"] for g in as_json(user(onegate, ready, "groups", "list", "--json"))}
    assert groups["hr-staff"] == 1 and groups["sys-admins"] == 1
    removed = user(onegate, ready, "groups", "remove-member", "hr-staff", "zhangwei")
    assert removed.stdout.strip() == "zhangwei removed from group hr-staff"
    tree = as_json(user(onegate, ready, "departments", "list", "--json"))
    assert tree[0]["name"] == "市政府" and tree[0]["children"][0]["name"] == "市人力资源和社会保障局"
    assert "  市人力资源和社会保障局  [hrss]" in user(onegate, ready, "departments", "list").stdout


# -- events (in-process, to read the bus) -------------------------------------------------------


def test_admin_changes_emit_iam_events(ready: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[Event] = []
    opener = onegate_runtime.open_runtime

    async def recording(settings: Any, **kwargs: Any) -> Any:
        runtime = await opener(settings, **kwargs)

        async def record(event: Event) -> None:
            events.append(event)

        runtime.bus.subscribe("test-recorder", record)
        return runtime

    monkeypatch.setattr("onegate.cli_common.open_runtime", recording)
    runner = CliRunner()
    outputs = []
    for args in (
        ("add", "zhangwei", "--name", "张伟", "--json"),
        ("lock", "zhangwei"),
        ("unlock", "zhangwei"),
        ("disable", "zhangwei"),
        ("enable", "zhangwei"),
        ("reset-password", "zhangwei", "--json"),
    ):
        result = runner.invoke(app, ["user", *args, "--data-dir", str(ready)])
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
    assert [e.action for e in events] == [
        "user-created",
        "user-locked",
        "user-unlocked",
        "user-disabled",
        "user-enabled",
        "password-reset",
    ]
    for e in events:
        flat = e.flat()
        assert flat["event.category"] == ["iam"] and flat["event.outcome"] == "success"
        assert flat["user.name"] == "zhangwei"
        assert flat["labels.actor"].startswith("cli:")
    assert events[1].get("onegate.reason") == "admin"
    assert events[2].get("labels.previous_status") == "locked"
    passwords = [json.loads(outputs[0])["password"], json.loads(outputs[-1])["password"]]
    everything = json.dumps([e.to_ecs() for e in events], ensure_ascii=False)
    assert not any(p in everything for p in passwords)
