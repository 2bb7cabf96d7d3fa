"""The demo city (shared/STORIES.md): departments, groups and the cast, for `onegate demo` only.

Seeded once per data dir. Each demo user gets a random password, kept in
``<data dir>/demo-users.json`` (mode 0600) and repeated in demo.json, so the demo, the
end-to-end tests and the screenshots can sign in. Never use this outside a demo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idp.directory.passwords import generate_password
from idp.directory.services import Directory

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


async def seed_demo(directory: Directory, data_dir: Path) -> list[dict[str, Any]]:
    """Create the demo city if this data dir has none yet; the users with their passwords."""
    record = data_dir / "demo-users.json"
    if record.exists():
        return list(json.loads(record.read_text(encoding="utf-8")))
    for code, name, name_en, parent in DEPARTMENTS:
        if await directory.get_department(code) is None:
            await directory.add_department(code, name, parent=parent, name_en=name_en)
    for group, description in GROUPS.items():
        await directory.ensure_group(group, description)
    users = []
    for person in DEMO_USERS:
        password = generate_password(16)
        existing = await directory.get_user(person.username)
        if existing is not None:  # seeded before, but its password record is gone: start afresh
            await directory.set_password(existing.id, password)
        else:
            await directory.add_user(
                username=person.username,
                display_name=person.display_name,
                password_hash=await directory.hash_password(password),
                groups=person.groups,
                email=person.email,
                department=person.department,
            )
        users.append(
            {
                "username": person.username,
                "display_name": person.display_name,
                "password": password,
                "groups": list(person.groups),
            }
        )
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(users, out, ensure_ascii=False, indent=2)
    return users
