"""``/api/soc/v1/rules``: the detection rules this SOC runs.

``GET /rules`` gives the built-in streaming rules with their effective parameters (the site's
overrides applied; a rule the site disabled is listed with ``enabled: false`` and its defaults),
the Sigma rules loaded from the rules folder with their compiled queries, and the folder's load
errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from onegate.admin.api import ApiRequest, Endpoint, json_response
from onegate.admin.soc_common import TEXT, answer, guarded, operation, ref
from soc.detections.model import RuleInfo, Severity

if TYPE_CHECKING:  # pySigma is loaded only where a rules folder is configured
    from soc.sigma.rules import LoadError, SigmaRule

__all__ = ["RuleEndpoints", "openapi_paths", "openapi_schemas", "rule_dict"]


def _plain(value: Any) -> Any:
    """A parameter value as JSON (tuples and sets as lists, anything else unknown as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return str(value)


def rule_dict(info: RuleInfo, *, enabled: bool = True) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name.as_dict(),
        "description": info.description.as_dict(),
        "severity": info.severity.value,
        "risk_score": info.risk_score,
        "technique": info.technique,
        "tactic": info.tactic,
        "kind": info.kind,
        "suppress_by": list(info.suppress_by),
        "suppress_for": info.suppress_for,
        "params": _plain(info.params),
        "enabled": enabled,
    }


def _sigma_dict(rule: SigmaRule) -> dict[str, Any]:
    correlation = rule.correlation
    return {
        **rule_dict(rule.info, enabled=bool(rule.standalone)),
        "title": rule.title,
        "file": rule.file,
        "sigma_id": rule.sigma_id,
        "sigma_name": rule.sigma_name,
        "standalone": rule.standalone,
        "queries": dict(rule.queries),
        "correlation": None if correlation is None else _plain(dataclasses.asdict(correlation)),
        "parts": [part.info.id for part in rule.parts],
    }


class RuleEndpoints:
    """``running``: the streaming rules the detector runs (effective parameters); ``builtin``:
    every built-in rule (the ones not running are disabled); ``sigma`` / ``sigma_errors``: the
    rules folder's rules (soc.sigma.SigmaRule) and load errors (soc.sigma.LoadError)."""

    def __init__(
        self,
        running: Sequence[RuleInfo],
        builtin: Sequence[RuleInfo],
        sigma: Sequence[SigmaRule],
        sigma_errors: Sequence[LoadError],
    ) -> None:
        self._running = list(running)
        self._builtin = list(builtin)
        self._sigma = list(sigma)
        self._errors = list(sigma_errors)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("GET", "/rules", guarded(self.list_rules))]

    async def list_rules(self, call: ApiRequest) -> Response:
        running = {info.id for info in self._running}
        streaming = [rule_dict(info) for info in self._running]
        streaming += [rule_dict(info, enabled=False) for info in self._builtin if info.id not in running]
        return json_response(
            {
                "streaming": streaming,
                "sigma": [_sigma_dict(rule) for rule in self._sigma],
                "sigma_errors": [{"file": e.file, "message": e.message} for e in self._errors],
            }
        )


# -- the OpenAPI description ---------------------------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    return {
        "/rules": {
            "get": operation(
                "listRules",
                "The built-in streaming rules (effective parameters) and the Sigma rules with their "
                "compiled queries and load errors",
                "rules",
                {"200": answer("RuleList", "The rules.")},
            )
        }
    }


def openapi_schemas() -> dict[str, Any]:
    rule = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": TEXT,
            "description": TEXT,
            "severity": {"type": "string", "enum": [s.value for s in Severity]},
            "risk_score": {"type": "integer"},
            "technique": {"type": "string"},
            "tactic": {"type": "string"},
            "kind": {"type": "string", "enum": ["streaming", "scheduled"]},
            "suppress_by": {"type": "array", "items": {"type": "string"}},
            "suppress_for": {"type": "number"},
            "params": {"type": "object", "description": "Thresholds and windows in effect."},
            "enabled": {"type": "boolean"},
        },
    }
    sigma = {
        "allOf": [
            ref("schemas", "Rule"),
            {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "file": {"type": "string"},
                    "sigma_id": {"type": ["string", "null"]},
                    "sigma_name": {"type": ["string", "null"]},
                    "standalone": {"type": "boolean"},
                    "queries": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Store -> the compiled text (Lucene, SQL).",
                    },
                    "correlation": {"type": ["object", "null"]},
                    "parts": {"type": "array", "items": {"type": "string"}},
                },
            },
        ]
    }
    return {
        "Rule": rule,
        "SigmaRule": sigma,
        "RuleList": {
            "type": "object",
            "properties": {
                "streaming": {"type": "array", "items": ref("schemas", "Rule")},
                "sigma": {"type": "array", "items": ref("schemas", "SigmaRule")},
                "sigma_errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"file": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        },
    }
