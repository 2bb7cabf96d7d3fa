"""Directory on SQLite and on the local PostgreSQL: users, status, passwords, groups, departments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_engine, migrate, session_factory
from idp.directory.models import UserStatus
from idp.directory.passwords import PasswordHashing
from idp.directory.policy import PasswordPolicy
from idp.directory.services import (
    DepartmentExists,
    DepartmentNode,
    Directory,
    DirectoryError,
    InvalidValue,
    PasswordRejected,
    UnknownDepartment,
    UnknownGroup,
    UnknownUser,
    UserExists,
    UserProfile,
    as_utc,
    sign_in_blocked,
)
from onegate.models import metadata
from onegate.runtime import MIGRATIONS

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


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
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def directory(engine: AsyncEngine, clock: Clock) -> Directory:
    d = Directory(session_factory(engine), policy=PasswordPolicy(min_length=12), clock=clock)
    await d.add_department("city", "市政府", name_en="City government")
    await d.add_department("hrss", "市人力资源和社会保障局", parent="city")
    await d.add_department("approval", "市行政审批局", parent="city")
    await d.ensure_group("hr-admins", "HR administrators")
    await d.ensure_group("ops-duty")
    return d


# -- users ------------------------------------------------------------------------------------


async def test_add_and_read_back_a_chinese_name(directory: Directory) -> None:
    user = await directory.add_user(
        username="ZhangWei",
        display_name=" 张伟 ",
        password_hash=None,
        email="zhangwei@example.gov.cn",
        phone="+86 138-0013-8000",
        department="hrss",
        groups=("hr-admins", "hr-admins"),
    )
    assert user.username == "zhangwei"  # lower-cased
    assert user.status is UserStatus.ACTIVE
    assert len(user.sub) == 32 and "zhangwei" not in user.sub
    by_name = await directory.get_user("ZHANGWEI")
    by_id = await directory.get_user_by_id(user.id)
    by_sub = await directory.get_user_by_sub(user.sub)
    assert by_name is not None and by_id is not None and by_sub is not None
    assert by_name.id == by_id.id == by_sub.id == user.id
    assert by_name.display_name == "张伟"
    assert by_name.phone == "+86 138-0013-8000"
    assert await directory.groups_of("zhangwei") == ["hr-admins"]
    assert await directory.get_user("nobody") is None
    assert await directory.get_user_by_id(999_999) is None


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"username": "ab"}, "username", "ab"),
        ({"username": "x" * 65}, "username", "x" * 65),
        ({"username": "zhang wei"}, "username", "zhang wei"),
        ({"username": "张伟"}, "username", "张伟"),
        ({"username": "-zhangwei"}, "username", "-zhangwei"),
        ({"username": "zhang@wei"}, "username", "zhang@wei"),
        ({"display_name": "  "}, "display name", "  "),
        ({"display_name": "张\u202e伟"}, "display name", "张\u202e伟"),  # right-to-left override
        ({"display_name": "张伟\nadmin"}, "display name", "张伟\nadmin"),
        ({"email": "zhangwei"}, "email", "zhangwei"),
        ({"email": "zhang wei@example.gov.cn"}, "email", "zhang wei@example.gov.cn"),
        ({"phone": "call me"}, "phone", "call me"),
        ({"phone": "123"}, "phone", "123"),
    ],
)
async def test_values_are_validated_and_named(
    directory: Directory, fields: dict[str, str], field: str, value: str
) -> None:
    values: dict[str, Any] = {"username": "zhangwei", "display_name": "张伟", **fields}
    with pytest.raises(InvalidValue) as caught:
        await directory.add_user(password_hash=None, **values)
    assert caught.value.field == field
    assert repr(value) in str(caught.value)
    assert await directory.count_users() == 0


async def test_duplicates_and_unknown_references_write_nothing(directory: Directory) -> None:
    await directory.add_user(username="zhangwei", display_name="张伟", password_hash=None)
    with pytest.raises(UserExists, match="'zhangwei'"):
        await directory.add_user(username="ZhangWei", display_name="另一个张伟", password_hash=None)
    with pytest.raises(UnknownGroup, match="'no-such-group'"):
        await directory.add_user(
            username="wangfang",
            display_name="王芳",
            password_hash=None,
            groups=("hr-admins", "no-such-group"),
        )
    with pytest.raises(UnknownDepartment, match="'nowhere'"):
        await directory.add_user(
            username="wangfang", display_name="王芳", password_hash=None, department="nowhere"
        )
    assert await directory.get_user("wangfang") is None
    assert [g.members for g in await directory.list_groups() if g.name == "hr-admins"] == [0]
    assert issubclass(UserExists, DirectoryError) and issubclass(PasswordRejected, DirectoryError)


async def test_list_filters_and_pages(directory: Directory) -> None:
    people = [
        ("zhangwei", "张伟", "hrss", ("hr-admins",)),
        ("wangfang", "王芳", "hrss", ("hr-admins", "ops-duty")),
        ("liuyang", "刘洋", "approval", ()),
        ("lina", "李娜", None, ("ops-duty",)),
    ]
    for username, name, department, groups in people:
        await directory.add_user(
            username=username, display_name=name, password_hash=None, department=department, groups=groups
        )
    await directory.disable("liuyang")

    def names(users: list[Any]) -> list[str]:
        return [u.username for u in users]

    assert names(await directory.list_users()) == ["lina", "liuyang", "wangfang", "zhangwei"]
    assert names(await directory.list_users(department="hrss")) == ["wangfang", "zhangwei"]
    assert names(await directory.list_users(group="ops-duty")) == ["lina", "wangfang"]
    assert names(await directory.list_users(status=UserStatus.DISABLED)) == ["liuyang"]
    assert names(
        await directory.list_users(status=UserStatus.ACTIVE, group="hr-admins", department="hrss")
    ) == [
        "wangfang",
        "zhangwei",
    ]
    assert names(await directory.list_users(offset=1, limit=2)) == ["liuyang", "wangfang"]
    assert await directory.count_users() == 4
    assert await directory.count_users(group="hr-admins") == 2
    assert await directory.count_users(status=UserStatus.LOCKED) == 0


async def test_update_changes_only_the_given_fields(directory: Directory) -> None:
    await directory.add_user(
        username="zhangwei",
        display_name="张伟",
        password_hash=None,
        email="old@example.gov.cn",
        department="hrss",
    )
    user = await directory.update_user("zhangwei", display_name="张 伟", phone="13800138000")
    assert (user.display_name, user.email, user.phone) == ("张 伟", "old@example.gov.cn", "13800138000")
    user = await directory.update_user("zhangwei", email=None, department=None)
    assert user.email is None and user.department_id is None
    with pytest.raises(UnknownUser, match="'nobody'"):
        await directory.update_user("nobody", display_name="x")


# -- status -----------------------------------------------------------------------------------


async def test_lock_unlock_disable_enable(directory: Directory) -> None:
    user = await directory.add_user(username="zhangwei", display_name="张伟", password_hash=None)
    await directory.record_lockout(user.id, until=NOW + timedelta(minutes=15))
    await directory.record_lockout(user.id, until=NOW + timedelta(minutes=30))

    locked = await directory.lock("zhangwei")
    assert (locked.previous, locked.user.status, locked.changed) == (
        UserStatus.ACTIVE,
        UserStatus.LOCKED,
        True,
    )
    again = await directory.lock("zhangwei")
    assert not again.changed

    unlocked = await directory.unlock("zhangwei")
    assert (unlocked.previous, unlocked.user.status) == (UserStatus.LOCKED, UserStatus.ACTIVE)
    # Unlock also ends the automatic lockout and forgets how many there were.
    assert unlocked.user.locked_until is None and unlocked.user.lockout_count == 0

    disabled = await directory.disable("zhangwei")
    assert disabled.user.status is UserStatus.DISABLED
    # Unlocking a disabled account does not enable it; enabling does.
    assert (await directory.unlock("zhangwei")).user.status is UserStatus.DISABLED
    enabled = await directory.enable("zhangwei")
    assert (enabled.previous, enabled.user.status) == (UserStatus.DISABLED, UserStatus.ACTIVE)
    # Enabling does not lift an administrator's lock.
    await directory.lock("zhangwei")
    assert (await directory.enable("zhangwei")).user.status is UserStatus.LOCKED

    stored = await directory.get_user("zhangwei")
    assert stored is not None and stored.status is UserStatus.LOCKED
    with pytest.raises(UnknownUser, match="'ghost'"):
        await directory.lock("ghost")


async def test_automatic_lockout_and_login_record(directory: Directory, clock: Clock) -> None:
    user = await directory.add_user(username="zhangwei", display_name="张伟", password_hash=None)
    assert await directory.record_lockout(user.id, until=NOW + timedelta(minutes=15)) == 1
    assert await directory.record_lockout(user.id, until=NOW + timedelta(minutes=30)) == 2
    stored = await directory.get_user_by_id(user.id)
    assert stored is not None
    assert as_utc(stored.locked_until) == NOW + timedelta(minutes=30)
    assert sign_in_blocked(stored, NOW) == "locked_out"
    assert sign_in_blocked(stored, NOW + timedelta(minutes=31)) is None  # ends by itself

    await directory.clear_lockout(user.id)
    stored = await directory.get_user_by_id(user.id)
    assert stored is not None and stored.locked_until is None and stored.lockout_count == 2
    await directory.clear_lockout(user.id, reset_count=True)
    stored = await directory.get_user_by_id(user.id)
    assert stored is not None and stored.lockout_count == 0

    await directory.record_lockout(user.id, until=NOW + timedelta(minutes=15))
    clock.now += 3600
    await directory.record_login(user.id)
    stored = await directory.get_user_by_id(user.id)
    assert stored is not None
    assert as_utc(stored.last_login_at) == NOW + timedelta(hours=1)
    # The count of lockouts survives a sign-in (progressive lockout keeps doubling across attacks).
    assert stored.lockout_count == 1

    await directory.disable("zhangwei")
    disabled = await directory.get_user_by_id(user.id)
    assert disabled is not None and sign_in_blocked(disabled, NOW) == "disabled"
    with pytest.raises(UnknownUser, match="id 424242"):
        await directory.record_login(424242)


# -- passwords --------------------------------------------------------------------------------


async def test_one_time_password_then_own_password(directory: Directory) -> None:
    user, one_time = await directory.add_user_with_one_time_password(
        username="zhangwei", display_name="张伟", department="hrss"
    )
    assert user.must_change_password and user.password_changed_at is None
    assert user.password_hash is not None and one_time not in user.password_hash
    assert await directory.verify_password(user, one_time)

    # The one-time password cannot become the permanent one.
    with pytest.raises(PasswordRejected) as reused:
        await directory.set_password(user.id, one_time)
    assert reused.value.reason_code == "reused"

    with pytest.raises(PasswordRejected) as refused:
        await directory.set_password(user.id, "zhangwei")
    assert refused.value.reasons == ("too_short", "contains_username")
    assert refused.value.reason_code == "too_short"
    assert "zhangwei" not in str(refused.value)  # the message never repeats the password

    with pytest.raises(PasswordRejected) as short:
        await directory.set_password(user.id, "春眠不觉晓处处闻啼鸟")  # 10 characters
    assert short.value.reasons == ("too_short",)
    stored = await directory.get_user_by_id(user.id)
    assert stored is not None and stored.must_change_password  # nothing changed
    assert await directory.verify_password(stored, one_time)


async def test_set_password_clears_the_forced_change(directory: Directory, clock: Clock) -> None:
    user, _ = await directory.add_user_with_one_time_password(username="zhangwei", display_name="张伟")
    clock.now += 60
    changed = await directory.set_password(user.id, "春眠不觉晓，处处闻啼鸟。夜来风雨声")
    assert not changed.must_change_password
    assert as_utc(changed.password_changed_at) == NOW + timedelta(seconds=60)
    stored = await directory.get_user_by_id(user.id)
    assert stored is not None
    assert await directory.verify_password(stored, "春眠不觉晓，处处闻啼鸟。夜来风雨声")
    assert not await directory.verify_password(stored, "春眠不觉晓，处处闻啼鸟。夜来风雨")
    with pytest.raises(UnknownUser):
        await directory.set_password(999_999, "a perfectly fine password")


async def test_reset_password_issues_a_new_one_time_password(directory: Directory) -> None:
    user, first = await directory.add_user_with_one_time_password(username="zhangwei", display_name="张伟")
    await directory.set_password(user.id, "my own long passphrase")
    reset, second = await directory.reset_password("zhangwei")
    assert second != first and len(second) >= 16
    assert reset.must_change_password
    assert await directory.verify_password(reset, second)
    assert not await directory.verify_password(reset, "my own long passphrase")
    with pytest.raises(UnknownUser):
        await directory.reset_password("nobody")


async def test_verify_rehashes_hashes_made_with_older_parameters(engine: AsyncEngine) -> None:
    old = PasswordHashing(time_cost=1, memory_cost_kib=8 * 1024)
    directory = Directory(session_factory(engine), hashing=PasswordHashing())
    user = await directory.add_user(
        username="zhangwei", display_name="张伟", password_hash=old.hash("an old but good passphrase")
    )
    assert directory.hashing.needs_rehash(user.password_hash or "")
    assert not await directory.verify_password(user, "a wrong passphrase entirely")
    unchanged = await directory.get_user("zhangwei")
    assert unchanged is not None and unchanged.password_hash == user.password_hash  # not on failure

    assert await directory.verify_password(user, "an old but good passphrase")
    stored = await directory.get_user("zhangwei")
    assert stored is not None and stored.password_hash != user.password_hash
    assert "m=19456,t=2,p=1" in (stored.password_hash or "")
    assert not directory.hashing.needs_rehash(stored.password_hash or "")
    assert await directory.verify_password(stored, "an old but good passphrase")
    # Unknown user: same work, always False.
    assert not await directory.verify_password(None, "an old but good passphrase")


# -- profile ----------------------------------------------------------------------------------


async def test_profile_in_two_queries(directory: Directory, engine: AsyncEngine) -> None:
    user = await directory.add_user(
        username="wangfang",
        display_name="王芳",
        password_hash=None,
        email="wangfang@example.gov.cn",
        department="hrss",
        groups=("ops-duty", "hr-admins"),
    )
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        profile = await directory.profile(user.id)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    # The user with department and groups, then the department tree for the chain.
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
    assert profile == UserProfile(
        sub=user.sub,
        username="wangfang",
        display_name="王芳",
        email="wangfang@example.gov.cn",
        phone=None,
        department="市人力资源和社会保障局",
        department_code="hrss",
        groups=("hr-admins", "ops-duty"),
        status=UserStatus.ACTIVE,
        departments=("hrss", "city"),
    )
    assert await directory.profile_by_sub(user.sub) == profile
    assert await directory.profile(999_999) is None
    assert await directory.profile_by_sub("no-such-sub") is None


async def test_profile_of_a_user_without_department_or_groups(directory: Directory) -> None:
    user = await directory.add_user(username="lina", display_name="李娜", password_hash=None)
    await directory.disable("lina")
    profile = await directory.profile(user.id)
    assert profile is not None
    assert (profile.department, profile.department_code, profile.groups) == (None, None, ())
    assert profile.status is UserStatus.DISABLED


# -- groups and departments -------------------------------------------------------------------


async def test_groups_and_membership(directory: Directory) -> None:
    await directory.add_user(username="zhangwei", display_name="张伟", password_hash=None)
    await directory.add_user(username="wangfang", display_name="王芳", password_hash=None)
    again = await directory.ensure_group("HR-Admins", "ignored: the group exists")
    assert again.name == "hr-admins" and again.description == "HR administrators"

    assert await directory.add_member("hr-admins", "wangfang") is True
    assert await directory.add_member("hr-admins", "wangfang") is False
    assert await directory.add_member("hr-admins", "ZhangWei") is True
    assert [u.username for u in await directory.members("hr-admins")] == ["wangfang", "zhangwei"]
    summaries = {g.name: (g.members, g.description) for g in await directory.list_groups()}
    assert summaries == {"hr-admins": (2, "HR administrators"), "ops-duty": (0, None)}

    assert await directory.remove_member("hr-admins", "zhangwei") is True
    assert await directory.remove_member("hr-admins", "zhangwei") is False
    assert await directory.groups_of("zhangwei") == []
    with pytest.raises(UnknownGroup, match="'nope'"):
        await directory.add_member("nope", "zhangwei")
    with pytest.raises(UnknownUser, match="'ghost'"):
        await directory.add_member("hr-admins", "ghost")
    with pytest.raises(InvalidValue, match="group name"):
        await directory.ensure_group("HR Admins!")
    assert (await directory.get_group("ops-duty")) is not None
    assert await directory.get_group("nope") is None


async def test_department_tree_and_path(directory: Directory) -> None:
    await directory.add_department("hrss-it", "信息中心", parent="hrss", name_en="IT centre")
    assert await directory.department_path("hrss") == "市政府 / 市人力资源和社会保障局"
    assert await directory.department_path("HRSS-IT") == "市政府 / 市人力资源和社会保障局 / 信息中心"
    assert await directory.department_path("city", separator=" > ") == "市政府"
    tree = await directory.department_tree()
    assert tree == (
        DepartmentNode(
            "city",
            "市政府",
            "City government",
            (
                DepartmentNode("approval", "市行政审批局", None),
                DepartmentNode(
                    "hrss",
                    "市人力资源和社会保障局",
                    None,
                    (DepartmentNode("hrss-it", "信息中心", "IT centre"),),
                ),
            ),
        ),
    )
    with pytest.raises(DepartmentExists, match="'hrss'"):
        await directory.add_department("hrss", "重复")
    with pytest.raises(UnknownDepartment, match="'nowhere'"):
        await directory.add_department("new", "新部门", parent="nowhere")
    with pytest.raises(UnknownDepartment, match="'nowhere'"):
        await directory.department_path("nowhere")
    department = await directory.get_department("hrss-it")
    assert department is not None and department.name_en == "IT centre"
