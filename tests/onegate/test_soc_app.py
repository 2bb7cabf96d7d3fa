"""The SOC role assembled (onegate.soc_app): this process's events -> spool -> detections ->
alerts and incidents -> the event store, on a real runtime."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from core.eventstore import Query
from core.settings import load_settings
from gateway.risk import RiskScores
from idp.events import auth_event
from onegate.runtime import Runtime, open_runtime
from onegate.soc_app import Soc, SocCollector, build_soc
from tests.conftest import _run


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onegate.bootstrap import initialise

    where = tmp_path_factory.mktemp("soc-app") / "data"
    _run(initialise(load_settings(None, overrides={"data_dir": where})))
    return where


@pytest.fixture
async def soc(template: Path, tmp_path: Path) -> AsyncIterator[Soc]:
    data_dir = tmp_path / "data"
    shutil.copytree(template, data_dir)
    overrides = {
        "data_dir": data_dir,
        "soc": {
            "rule_params": {"onegate.brute-force": {"threshold": 5}},
            "rules_disabled": ["onegate.first-seen-device"],
            "auto_response": {"onegate.brute-force": ["raise-risk"]},
        },
    }
    runtime: Runtime = await open_runtime(load_settings(None, overrides=overrides))
    await runtime.bus.start()
    built = build_soc(runtime)
    await built.start()
    yield built
    await built.close()
    await runtime.close()


async def _until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_events_of_this_process_become_alerts_incidents_and_stored_events(soc: Soc) -> None:
    await soc.runtime.directory.add_user(username="wangfang", display_name="王芳", password_hash=None)
    bus = soc.runtime.bus
    for _ in range(5):
        bus.emit(
            auth_event(
                "user-login",
                success=False,
                reason="bad_password",
                username="wangfang",
                source_ip="203.0.113.7",
            )
        )

    async def alerted() -> bool:
        # Triage raises the alert, then links its incident and runs the automatic response.
        page = await soc.alerts.list()
        return page.total == 1 and bool(await soc.responses.history(alert_id=page.alerts[0].id))

    await _until(alerted)
    [alert] = (await soc.alerts.list()).alerts
    assert alert.rule_id == "onegate.brute-force" and alert.entity["user.name"] == "wangfang"
    [incident] = await soc.incidents.list()
    assert incident.alert_count == 1
    # The site's automatic response ran through the gateway's risk scores.
    [response] = await soc.responses.history(alert_id=alert.id)
    assert response.automatic and response.done and response.target == "wangfang"
    assert await RiskScores(soc.runtime.kv).score("wangfang") == 80
    assert await soc.ingest.drain(10)
    stored = await soc.store.count(Query(text="event.action:user-login"))
    assert stored == 5
    assert "onegate.first-seen-device" not in {rule.id for rule in soc.detector.rules}

    registry = CollectorRegistry()
    registry.register(SocCollector(soc))
    text = generate_latest(registry).decode()
    assert "onegate_soc_signals_total 1.0" in text  # the fifth failure completed the brute force
    assert "onegate_soc_ingest_written_total" in text and "onegate_soc_store_up 1.0" in text
    assert "onegate_soc_spool_backlog_documents 0.0" in text


def test_unknown_rules_in_settings_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = load_settings(None, overrides={"data_dir": tmp_path, "soc": {"rules_disabled": ["nope"]}})
        from onegate.bootstrap import initialise

        await initialise(settings)
        runtime = await open_runtime(settings)
        try:
            with pytest.raises(ValueError, match="unknown rules: nope"):
                build_soc(runtime)
        finally:
            await runtime.close()

    _run(scenario())
