"""CSV import: encodings, line-numbered bad rows, dry runs that change nothing, idempotent re-imports."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_engine, migrate, session_factory
from idp.directory.csv_import import (
    CsvFormatError,
    RowOutcome,
    apply_import,
    decode_csv,
    import_users,
    parse_csv,
)
from idp.directory.services import Directory
from onegate.models import metadata
from onegate.runtime import MIGRATIONS

STAFF = """username,display_name,email,phone,department,groups
zhangwei,张伟,zhangwei@example.gov.cn,13800138000,hrss,hr-staff
wangfang,王芳,wangfang@example.gov.cn,,hrss,hr-staff;hr-admins
liuyang,刘洋,,,approval,
Li Na,李娜,,,,
chenjing,陈静,not-an-address,,,
zhaolei,赵磊,,,planning,
sunli,孙丽,,,,soc-analysts|ops-duty
"""
GOOD = ["zhangwei", "wangfang", "liuyang"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'onegate.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = create_engine(url)
    await migrate(eng, MIGRATIONS)
    yield eng
    if request.param == "postgresql":
        async with eng.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    await eng.dispose()


@pytest.fixture
async def directory(engine: AsyncEngine) -> Directory:
    d = Directory(session_factory(engine))
    await d.add_department("city", "市政府")
    await d.add_department("hrss", "市人力资源和社会保障局", parent="city")
    await d.add_department("approval", "市行政审批局", parent="city")
    for group in ("hr-staff", "hr-admins"):
        await d.ensure_group(group)
    return d


async def _snapshot(directory: Directory) -> tuple[list[tuple[str, str, bool]], list[tuple[str, int]]]:
    users = [(u.username, u.display_name, u.must_change_password) for u in await directory.list_users()]
    groups = [(g.name, g.members) for g in await directory.list_groups()]
    return users, groups


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (STAFF.encode(), "utf-8"),
        (codecs.BOM_UTF8 + STAFF.encode(), "utf-8-sig"),
        (STAFF.encode("gb18030"), "gb18030"),
        (STAFF.encode("gbk"), "gb18030"),  # GBK is a subset
        (STAFF.encode("utf-16"), "utf-16"),
    ],
)
def test_encodings_are_detected(data: bytes, encoding: str) -> None:
    decoded, used = decode_csv(data)
    assert used == encoding
    assert decoded.lstrip("\ufeff") == STAFF


def test_an_explicit_encoding_wins_and_is_checked() -> None:
    assert decode_csv(STAFF.encode("gb18030"), "GB18030") == (STAFF, "gb18030")
    assert decode_csv(codecs.BOM_UTF8 + b"username\n", "utf-8")[0] == "username\n"
    with pytest.raises(CsvFormatError, match="not valid utf-8"):
        decode_csv(STAFF.encode("gb18030"), "utf-8")
    with pytest.raises(CsvFormatError, match="unknown encoding 'klingon'"):
        decode_csv(b"x", "klingon")


def test_undecodable_bytes_ask_for_an_encoding() -> None:
    with pytest.raises(CsvFormatError, match="--encoding"):
        decode_csv(b"username,display_name\n\xff\xfe\xfd\xfc\x80\x80,x\n\x81\x20\n")


# -- parsing ----------------------------------------------------------------------------------


def test_bad_rows_are_reported_by_line_with_the_reason() -> None:
    parsed = parse_csv(STAFF)
    assert [r.username for r in parsed.rows] == [*GOOD, "zhaolei", "sunli"]
    assert [(b.line, b.username) for b in parsed.bad] == [(5, "Li Na"), (6, "chenjing")]
    assert "invalid username 'Li Na'" in parsed.bad[0].reason
    assert "invalid email 'not-an-address'" in parsed.bad[1].reason
    wangfang = parsed.rows[1]
    assert (wangfang.line, wangfang.groups, wangfang.phone) == (3, ("hr-staff", "hr-admins"), None)
    assert parsed.rows[4].groups == ("soc-analysts", "ops-duty")  # "|" separates too


def test_line_numbers_follow_the_file_through_quotes_and_blank_lines() -> None:
    content = (
        "username,display_name\n"  # 1
        '"zhangwei","张伟"\n'  # 2
        "\n"  # 3
        '"wangfang","王芳\n(人社局)"\n'  # 4-5: a quoted cell over two lines (no newlines in names)
        ",,\n"  # 6: what Excel leaves after the last row
        "x,太短\n"  # 7
        "zhangwei,张伟又一次\n"  # 8
        "liuyang,刘洋,extra\n"  # 9
        "lina,\n"  # 10
        "chenjing,陈静\n"  # 11
    )
    parsed = parse_csv(content)
    assert [(r.line, r.username) for r in parsed.rows] == [(2, "zhangwei"), (11, "chenjing")]
    expected = [
        (4, "invalid display name '王芳\\n(人社局)': no control characters"),
        (7, "invalid username 'x': 3 to 64 characters"),
        (8, "user 'zhangwei' appears again (first on line 2)"),
        (9, "3 cells, the header has 2"),
        (10, "display_name is empty"),
    ]
    assert len(parsed.bad) == len(expected)
    for bad, (line, reason) in zip(parsed.bad, expected, strict=True):
        assert bad.line == line
        assert bad.reason.startswith(reason), bad.reason


def test_chinese_headers_and_tab_separated_files() -> None:
    parsed = parse_csv("用户名\t姓名\t部门\t用户组\nzhangwei\t张伟\thrss\thr-staff\n")
    assert parsed.rows[0].username == "zhangwei"
    assert (parsed.rows[0].department, parsed.rows[0].groups) == ("hrss", ("hr-staff",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("display_name,email\n张伟,a@b.cn\n", "no 'username' column"),
        ("username,display_name,salary\n", "unknown column 'salary'"),
        ("username,display_name,username\n", "appears twice"),
    ],
)
def test_a_bad_header_stops_before_any_row(content: str, message: str) -> None:
    with pytest.raises(CsvFormatError, match=message):
        parse_csv(content)


def test_display_names_with_control_characters_are_bad_rows() -> None:
    parsed = parse_csv('username,display_name\nzhangwei,"张伟\u202e"\n')
    assert parsed.rows == () and parsed.bad[0].line == 2
    assert "display name" in parsed.bad[0].reason


# -- applying ---------------------------------------------------------------------------------


async def test_dry_run_changes_nothing(directory: Directory) -> None:
    before = await _snapshot(directory)
    report = await import_users(directory, STAFF.encode("gb18030"), dry_run=True, create_groups=True)
    assert await _snapshot(directory) == before
    assert report.dry_run and report.encoding == "gb18030"
    assert [o.username for o in report.created] == [*GOOD, "sunli"]
    assert report.passwords == []
    assert report.groups_created == ["ops-duty", "soc-analysts"]  # would be created
    assert [(b.line, b.reason) for b in report.bad] == [
        (5, report.bad[0].reason),
        (6, report.bad[1].reason),
        (7, "no department with code 'planning'"),
    ]


async def test_good_rows_are_kept_and_bad_rows_reported(directory: Directory) -> None:
    created: list[RowOutcome] = []
    steps: list[int] = []
    report = await import_users(directory, STAFF.encode(), progress=steps.append, on_created=created.append)
    assert [o.username for o in report.created] == GOOD
    assert [o.username for o in created] == GOOD
    assert steps == [1, 2, 3, 4, 5]
    assert [(b.line, b.username) for b in report.bad] == [
        (5, "Li Na"),
        (6, "chenjing"),
        (7, "zhaolei"),
        (8, "sunli"),
    ]
    assert "no group 'soc-analysts', 'ops-duty' (--create-groups creates them)" in report.bad[3].reason
    assert report.groups_created == []

    passwords = dict(report.passwords)
    assert set(passwords) == set(GOOD)
    for username in GOOD:
        user = await directory.get_user(username)
        assert user is not None and user.must_change_password
        assert await directory.verify_password(user, passwords[username])
    wangfang = await directory.get_user("wangfang")
    assert wangfang is not None
    profile = await directory.profile(wangfang.id)
    assert profile is not None
    assert (profile.display_name, profile.department_code, profile.groups) == (
        "王芳",
        "hrss",
        ("hr-admins", "hr-staff"),
    )
    assert "password" not in repr(report.created[0])  # repr hides it
    assert passwords["zhangwei"] not in repr(report.created)
    assert passwords["zhangwei"] not in str(report.summary())


async def test_reimport_is_idempotent_and_updates(directory: Directory) -> None:
    first = await import_users(directory, STAFF.encode())
    users_after_first = await _snapshot(directory)
    zhangwei = await directory.get_user("zhangwei")
    assert zhangwei is not None

    again = await import_users(directory, STAFF.encode())
    assert again.created == [] and again.updated == []
    assert [o.username for o in again.unchanged] == GOOD
    assert await _snapshot(directory) == users_after_first
    unchanged = await directory.get_user("zhangwei")
    assert unchanged is not None and unchanged.password_hash == zhangwei.password_hash
    assert len(again.bad) == len(first.bad)

    changed = STAFF.replace(
        "zhangwei,张伟,zhangwei@example.gov.cn,13800138000,hrss,hr-staff",
        "zhangwei,张 伟,,,approval,hr-staff;hr-admins",
    )
    report = await import_users(directory, changed.encode())
    assert [(o.username, o.changes) for o in report.updated] == [
        ("zhangwei", ("display_name", "department", "+group:hr-admins"))
    ]
    user = await directory.get_user("zhangwei")
    assert user is not None
    # An empty cell leaves the stored value alone.
    assert (user.display_name, user.email, user.phone) == ("张 伟", "zhangwei@example.gov.cn", "13800138000")
    assert await directory.groups_of("zhangwei") == ["hr-admins", "hr-staff"]


async def test_create_groups_creates_the_missing_ones(directory: Directory) -> None:
    report = await import_users(directory, STAFF.encode(), create_groups=True)
    assert report.groups_created == ["ops-duty", "soc-analysts"]
    assert "sunli" in [o.username for o in report.created]
    assert await directory.groups_of("sunli") == ["ops-duty", "soc-analysts"]
    # Departments are never created by an import: they need a name and a place in the tree.
    assert [b.username for b in report.bad] == ["Li Na", "chenjing", "zhaolei"]


async def test_a_row_failing_while_written_does_not_stop_the_others(directory: Directory) -> None:
    parsed = parse_csv("username,display_name,department\nzhangwei,张伟,hrss\nwangfang,王芳,hrss\n")
    await directory.add_user(username="wangfang", display_name="王芳", password_hash=None)
    report = await apply_import(directory, parsed)
    assert [o.username for o in report.created] == ["zhangwei"]
    assert [(o.username, o.changes) for o in report.updated] == [("wangfang", ("department",))]
