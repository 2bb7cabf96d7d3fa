"""Assemble the SOC API (``/api/soc/v1``, mounted in the SOC role app) from the SOC's services.

The same edge as the admin API (onegate.admin.api.AdminApi: the admin API keys, JSON errors in
both languages, body limits, never a 500), with the SOC's endpoint groups: alerts, incidents,
responses, drills, rules and events (onegate.admin.soc_*). Loaded only by a process that runs the
SOC role.
"""

from __future__ import annotations

from starlette.responses import Response

from core.net import TrustedProxies
from onegate.admin.api import AdminApi, ApiRequest, Endpoint, json_response
from onegate.admin.app import admin_keys
from onegate.admin.soc_alerts import AlertEndpoints
from onegate.admin.soc_common import PREFIX
from onegate.admin.soc_drills import DrillEndpoints
from onegate.admin.soc_events import EventEndpoints
from onegate.admin.soc_incidents import IncidentEndpoints
from onegate.admin.soc_openapi import document
from onegate.admin.soc_responses import ResponseEndpoints
from onegate.admin.soc_rules import RuleEndpoints
from onegate.soc_app import Soc
from soc.detections.rules import builtin_rules

__all__ = ["PREFIX", "build_soc_api", "soc_endpoints"]


async def _openapi(_call: ApiRequest) -> Response:
    return json_response(document())


def soc_endpoints(soc: Soc) -> list[Endpoint]:
    """Every endpoint of the SOC API, on ``soc``'s services."""
    return [
        Endpoint("GET", "/openapi.json", _openapi, public=True),
        *AlertEndpoints(soc.alerts, soc.store).endpoints(),
        *IncidentEndpoints(soc.incidents, soc.alerts, soc.responses, soc.store).endpoints(),
        *ResponseEndpoints(soc.responses, soc.alerts, soc.incidents).endpoints(),
        *DrillEndpoints(soc.drills, soc.store, on_change=soc.refresh_drills).endpoints(),
        *RuleEndpoints(
            soc.detector.rules, [rule.info for rule in builtin_rules()], soc.sigma, soc.sigma_errors
        ).endpoints(),
        *EventEndpoints(soc.store).endpoints(),
    ]


def build_soc_api(soc: Soc) -> AdminApi:
    """The SOC API on ``soc``'s services, authenticated by the admin API keys of its runtime."""
    runtime = soc.runtime
    return AdminApi(
        keys=admin_keys(runtime),
        events=runtime.bus,
        trusted_proxies=TrustedProxies(runtime.settings.server.trusted_proxies),
        endpoints=soc_endpoints(soc),
    )
