"""The demo city (shared/STORIES.md): departments, groups and the cast, for `onegate demo` only.

Seeded once per data dir. Each demo user gets a random password, kept in
``<data dir>/demo-users.json`` (mode 0600) and repeated in demo.json, so the demo, the
end-to-end tests and the screenshots can sign in. 张伟 signs in with password + TOTP: his
authenticator seed is enrolled and kept there too (``totp_secret``, ``totp_uri`` to scan). The
administrators' groups and the SOC analysts must use a second factor (STORIES.md), so 王芳 and
the others set one up at their first sign-in. Never use this outside a demo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp

from idp.directory.passwords import generate_password
from idp.directory.services import Directory
from mfa.totp import TotpService

__all__ = ["DEMO_USERS", "DemoUser", "seed_demo"]

# (code, name, English name, parent code)
DEPARTMENTS = (
    ("city", "市政府", "City government", None),
    ("bigdata", "市大数据管理局", "Big Data Administration", "city"),
    ("hrss", "市人力资源和社会保障局", "Human Resources and Social Security", "city"),
    ("approval", "市行政审批局", "Administrative Approval", "city"),
    ("nrp", "市自然资源和规划局", "Natural Resources and Planning", "city"),
    ("psb", "市公安局", "Public Security", "city"),
)

GROUPS = {
    "civil-servants": "全体公务人员 All civil servants",
    "hr-staff": "人社局工作人员 HR department staff",
    "hr-admins": "人事系统管理员 HR system administrators",
    "approval-staff": "审批局工作人员 Approval bureau staff",
    "ops-duty": "城市运行值班 City operations duty officers",
    "soc-analysts": "安全分析员 SOC analysts",
    "app-owners": "应用负责人 Application owners",
}


# Groups whose members must sign in with a second factor.
MFA_GROUPS = ("hr-admins", "soc-analysts", "sys-admins", "sec-admins", "auditors")
# Demo users whose authenticator app is enrolled at seeding.
TOTP_USERS = ("zhangwei",)


@dataclass(frozen=True)
class DemoUser:
    username: str
    display_name: str
    department: str
    groups: tuple[str, ...]
    email: str


DEMO_USERS = (
    DemoUser("zhangwei", "张伟", "hrss", ("civil-servants", "hr-staff"), "zhangwei@hrss.city.gov.cn"),
    DemoUser(
        "wangfang", "王芳", "hrss", ("civil-servants", "hr-staff", "hr-admins"), "wangfang@hrss.city.gov.cn"
    ),
    DemoUser(
        "liuyang", "刘洋", "approval", ("civil-servants", "approval-staff"), "liuyang@approval.city.gov.cn"
    ),
    DemoUser("lina", "李娜", "bigdata", ("civil-servants", "soc-analysts"), "lina@bigdata.city.gov.cn"),
    DemoUser("chenjing", "陈静", "bigdata", ("civil-servants", "app-owners"), "chenjing@bigdata.city.gov.cn"),
    DemoUser("sysadmin", "系统管理员", "bigdata", ("sys-admins",), "sysadmin@bigdata.city.gov.cn"),
    DemoUser("secadmin", "安全管理员", "bigdata", ("sec-admins",), "secadmin@bigdata.city.gov.cn"),
    DemoUser("auditor", "审计管理员", "bigdata", ("auditors",), "auditor@bigdata.city.gov.cn"),
)


async def _enrol_totp(totp: TotpService, user_id: int, username: str) -> dict[str, str]:
    await totp.remove_all(user_id, emit=False)  # a re-seed replaces the recorded seed
    enrolment = await totp.begin_enrolment(user_id, username)
    code = pyotp.TOTP(enrolment.secret_base32).now()
    if not await totp.confirm_enrolment(user_id, code, name="演示手机 Demo phone"):
        raise RuntimeError("demo TOTP enrolment failed")
    return {"totp_secret": enrolment.secret_base32, "totp_uri": enrolment.provisioning_uri}


async def seed_demo(
    directory: Directory, data_dir: Path, *, totp: TotpService | None = None
) -> list[dict[str, Any]]:
    """Create the demo city if this data dir has none yet; the users with their passwords
    (and, with ``totp``, the seeds of those who sign in with an authenticator app)."""
    record = data_dir / "demo-users.json"
    if record.exists():
        return list(json.loads(record.read_text(encoding="utf-8")))
    for code, name, name_en, parent in DEPARTMENTS:
        if await directory.get_department(code) is None:
            await directory.add_department(code, name, parent=parent, name_en=name_en)
    for group, description in GROUPS.items():
        await directory.ensure_group(group, description)
    for group in MFA_GROUPS:
        await directory.ensure_group(group)
        await directory.set_group_mfa_required(group, True)
    users = []
    for person in DEMO_USERS:
        password = generate_password(16)
        existing = await directory.get_user(person.username)
        if existing is not None:  # seeded before, but its password record is gone: start afresh
            await directory.set_password(existing.id, password)
            user_id = existing.id
        else:
            added = await directory.add_user(
                username=person.username,
                display_name=person.display_name,
                password_hash=await directory.hash_password(password),
                groups=person.groups,
                email=person.email,
                department=person.department,
            )
            user_id = added.id
        entry: dict[str, Any] = {
            "username": person.username,
            "display_name": person.display_name,
            "password": password,
            "groups": list(person.groups),
        }
        if totp is not None and person.username in TOTP_USERS:
            entry.update(await _enrol_totp(totp, user_id, person.username))
        users.append(entry)
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(users, out, ensure_ascii=False, indent=2)
    return users
