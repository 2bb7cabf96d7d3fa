"""The admin API (``/api/admin/v1``, JSON, authenticated by admin API keys).

api.py              the edge: bearer-key authentication, dispatch, JSON bodies and errors
keys.py             admin API keys (made and revoked with ``onegate admin api-keys``)
models.py           their table
gateway_routes.py   ``/gateway/routes``: the gateway's routes
openapi.py          the OpenAPI document (``/openapi.json``)
app.py              assembly from the runtime
"""

from __future__ import annotations

__all__: list[str] = []
