"""The JSON APIs authenticated by admin API keys: the admin API (``/api/admin/v1``, on the IdP)
and the SOC API (``/api/soc/v1``, on the SOC).

api.py              the edge: bearer-key authentication, dispatch, JSON bodies and errors
keys.py             admin API keys (made and revoked with ``onegate admin api-keys``)
models.py           their table
gateway_routes.py   ``/gateway/routes``: the gateway's routes
openapi.py          the OpenAPI documents' shared parts; the admin API's (``/openapi.json``)
app.py              the admin API's assembly from the runtime
soc_api.py          the SOC API's assembly from the SOC's services (onegate.soc_app)
soc_common.py       what its endpoint groups share (bodies, filters, errors)
soc_alerts.py       ``/alerts``: triage, evidence, history, bulk
soc_incidents.py    ``/incidents``: detail with timeline, status, link, merge, comments
soc_responses.py    ``/responses``: response actions and their record
soc_drills.py       ``/drills``: exercises, test cases, scorecards
soc_rules.py        ``/rules``: built-in and Sigma rules
soc_events.py       ``/events``: search and aggregations over the event store
soc_openapi.py      the SOC API's OpenAPI document
"""

from __future__ import annotations

__all__: list[str] = []
