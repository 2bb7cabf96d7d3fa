"""Prepare a stack's data dir in one process: what ``onegate init``, ``onegate user departments
add``, ``onegate user groups add`` and ``onegate policy apply`` do, through the same functions,
without paying a Python start-up per command (``python -m tests.gateway.stack_setup POLICY``,
with the stack's ``ONEGATE_*`` environment)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from core.settings import load_settings
from onegate.bootstrap import initialise
from onegate.cli_policy_store import directory_catalog, policy_store
from onegate.runtime import open_runtime
from policy.rules import load_path

DEPARTMENTS = (
    ("city", "市政府", None),
    ("hrss", "市人力资源和社会保障局", "city"),
    ("approval", "市行政审批局", "city"),
)
GROUPS = ("civil-servants", "hr-staff", "hr-admins", "approval-staff", "ops-duty")


async def prepare(policy: Path) -> None:
    settings = load_settings(None)
    await initialise(settings)
    runtime = await open_runtime(settings)
    try:
        for code, name, parent in DEPARTMENTS:
            if await runtime.directory.get_department(code) is None:
                await runtime.directory.add_department(code, name, parent=parent)
        for group in GROUPS:
            await runtime.directory.ensure_group(group)
        bundle = load_path(policy)
        await policy_store(runtime).apply(
            bundle, author="tests", comment="tests", catalog=await directory_catalog(runtime, bundle)
        )
    finally:
        await runtime.close()


if __name__ == "__main__":
    asyncio.run(prepare(Path(sys.argv[1])))
