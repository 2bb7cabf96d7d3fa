"""The pySigma processing pipeline for OneGate's events: Sigma's log sources and field names in,
flat ECS out.

Sigma rules name a log source (``category: webserver``, ``product: onegate`` ...) and the fields
of that source (``c-uri``, ``cs-method`` ...). pySigma ships no mapping for web or proxy logs to
ECS, and none for our own events, so this module holds it:

* ``category: webserver`` or ``proxy`` means the gateway's access events (``event.action:
  access``); Sigma's generic web fields are renamed to ECS (:data:`WEB_FIELDS`).
* ``product: onegate`` with ``service: idp``, ``gateway`` or ``mfa`` means that component's own
  events (by ``event.dataset``); their fields are ECS already.
* ``category: authentication`` means ``event.category: authentication`` (the IdP's sign-ins, MFA
  checks, token grants).

A field that is neither mapped nor an ECS name of a namespace our events use is refused with its
name: a rule that reads ``CommandLine`` would otherwise compile and silently never match. So are
log sources we do not record (``product: windows``), field-less keyword detections (their
meaning differs between a Lucene default field and SQL) and the ``|re`` modifier (Lucene's regular
expressions are not Python's or SQLite's). See docs/soc.md, "Sigma rules".
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from sigma.conditions import ConditionOR
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaTransformationError
from sigma.processing.conditions import LogsourceCondition, RuleProcessingCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import AddConditionTransformation, FieldMappingTransformation
from sigma.processing.transformations.base import DetectionItemTransformation, PreprocessingTransformation
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaLogSource, SigmaRule
from sigma.types import (
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SigmaType,
)

from core.events import ECS_FIELD_SETS
from core.eventstore import CASELESS

__all__ = [
    "ECS_NAMESPACES",
    "IP_FIELDS",
    "LOGSOURCES",
    "WEB_FIELDS",
    "is_ecs",
    "map_field",
    "onegate_pipeline",
]

# Sigma's generic web-server and proxy fields -> where OneGate's access events keep them. Two
# targets mean either (c-uri is the path and the query together: either part may hold it).
WEB_FIELDS: dict[str, str | list[str]] = {
    "c-uri": ["url.path", "url.query"],
    "c-uri-stem": "url.path",
    "c-uri-query": "url.query",
    "c-uri-extension": "url.extension",
    "cs-uri": ["url.path", "url.query"],
    "cs-method": "http.request.method",
    "sc-status": "http.response.status_code",
    "c-ip": "source.ip",
    "src_ip": "source.ip",
    "s-ip": "destination.ip",
    "dst_ip": "destination.ip",
    "cs-user-agent": "user_agent.original",
    "c-useragent": "user_agent.original",
    "cs-host": "url.domain",
    "r-dns": "url.domain",
    "cs-referer": "http.request.referrer",
    "cs-referrer": "http.request.referrer",
    "cs-bytes": "http.request.body.bytes",
    "sc-bytes": "http.response.body.bytes",
    "cs-username": "user.name",
    "cs-version": "http.version",
}

_ECS_SINGLE = frozenset(("@timestamp", "message", "tags"))
# The ECS field sets (top-level namespaces) our events use, as core.events checks them; a dotted
# name under one of them is taken as ECS (message and tags are single names, not field sets).
ECS_NAMESPACES = ECS_FIELD_SETS - _ECS_SINGLE
_ECS_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")

IP_FIELDS = ("source.ip", "destination.ip", "client.ip")

# Logsources a rule may name: (category, product, service) -> the condition that selects them.
_DATASETS = {
    "idp": ["onegate.idp"],
    # The gateway's access events carry the default dataset "onegate" today; its other events
    # "onegate.gateway".
    "gateway": ["onegate.gateway", "onegate"],
    "mfa": ["onegate.mfa"],
}
LOGSOURCES = (
    "category: webserver",
    "category: proxy",
    "category: authentication",
    "product: onegate",
    *(f"product: onegate, service: {service}" for service in _DATASETS),
)


def is_ecs(name: str) -> bool:
    """Whether ``name`` reads as an ECS field of a namespace our events use."""
    if name in _ECS_SINGLE:
        return True
    return _ECS_NAME.fullmatch(name) is not None and name.split(".", 1)[0] in ECS_NAMESPACES


def map_field(name: str, logsource: SigmaLogSource | None) -> list[str]:
    """The ECS fields a rule's field ``name`` stands for under ``logsource`` (for correlation
    group-by and value fields, which pySigma maps only for rules it converts itself)."""
    web = logsource is not None and logsource.category in ("webserver", "proxy")
    if web and name in WEB_FIELDS:
        target = WEB_FIELDS[name]
        return list(target) if isinstance(target, list) else [target]
    if is_ecs(name):
        return [name]
    raise SigmaTransformationError(f"field {name!r} has no mapping to OneGate's ECS events")


@dataclass
class RefuseUnknownLogsource(PreprocessingTransformation):
    """Fails a rule whose log source OneGate does not record."""

    def apply(self, rule: SigmaRule | SigmaCorrelationRule) -> None:
        super().apply(rule)
        if not isinstance(rule, SigmaRule):
            return
        source = rule.logsource
        if (
            source.category in (None, "webserver", "proxy", "authentication")
            and source.product in (None, "onegate")
            and (source.service is None or (source.product == "onegate" and source.service in _DATASETS))
            and (source.category is not None or source.product is not None)
        ):
            return
        named = ", ".join(
            f"{key}: {value}"
            for key, value in (
                ("category", source.category),
                ("product", source.product),
                ("service", source.service),
            )
            if value
        )
        raise SigmaTransformationError(
            f"log source {{{named}}} is not one OneGate records ({'; '.join(LOGSOURCES)})",
            source=rule.source,
        )


@dataclass
class RefuseUnknownFields(DetectionItemTransformation):
    """Fails a rule on a detection item whose field (after mapping) is not ECS, that has no field
    (a keyword search), or that uses ``|re``; the message names the field."""

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> None:
        name = detection_item.field
        if name is None:
            raise SigmaTransformationError(
                "keyword (field-less) detections are not supported: name the field to search",
                source=detection_item.source,
            )
        if not is_ecs(name):
            raise SigmaTransformationError(
                f"field {name!r} has no mapping to OneGate's ECS events (use a Sigma web field "
                "name under category webserver / proxy, or the ECS name)",
                source=detection_item.source,
            )
        if any(isinstance(value, SigmaRegularExpression) for value in detection_item.value):
            raise SigmaTransformationError(
                f"the |re modifier (on {name}) is not supported: regular expressions differ "
                "between Lucene and SQLite",
                source=detection_item.source,
            )

    def apply_detection(self, detection: SigmaDetection) -> None:
        for item in detection.detection_items:
            if isinstance(item, SigmaDetection):
                self.apply_detection(item)
            else:
                self.apply_detection_item(item)


def _plain(value: SigmaCasedString) -> SigmaString:
    """A ``|cased`` value as a plain string (the same parts), for a field that keeps case."""
    plain = SigmaString(value.original)
    plain.s = value.s
    return plain


def _has_case(value: SigmaString) -> bool:
    """Whether a letter of ``value`` has another case: without one (``403``, ``10.0.0.1``,
    ``/*``) a case-insensitive match is a plain one, which also works on a number field."""
    return any(part.lower() != part.upper() for part in value.s if isinstance(part, str))


@dataclass
class CaselessStrings(DetectionItemTransformation):
    """Sigma matches strings case-insensitively unless ``|cased``: a string value is lower-cased
    and compared with the field's ``.caseless`` form (core.eventstore.CASELESS: a sub-field on the
    search stores, computed by SQLite). A ``|cased`` value, or one with no letter that has a case,
    is compared with the field itself, which keeps case. So are other values (numbers, booleans,
    null, ranges, ``|cidr``, ``|exists``). An item holding both kinds becomes two items linked as
    its values were (any of them, or all)."""

    def apply_detection_item(
        self, detection_item: SigmaDetectionItem
    ) -> SigmaDetectionItem | SigmaDetection | None:
        name = detection_item.field
        if name is None or name.endswith(CASELESS):
            return None
        caseless: list[SigmaType] = []
        kept: list[SigmaType] = []
        for value in detection_item.value:
            if isinstance(value, SigmaCasedString):
                kept.append(_plain(value))
            elif isinstance(value, SigmaString) and _has_case(value):
                caseless.append(value.lower())
            else:
                kept.append(value)
        items: list[SigmaDetectionItem | SigmaDetection] = []
        if caseless:
            items.append(
                dataclasses.replace(
                    detection_item, field=name + CASELESS, value=caseless, auto_modifiers=False
                )
            )
        if kept:
            items.append(dataclasses.replace(detection_item, value=kept, auto_modifiers=False))
        if len(items) == 1:
            return items[0]
        return SigmaDetection(items, item_linking=detection_item.value_linking)


_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class NumberStringsAsNumbers(DetectionItemTransformation):
    """SQL only: a string value that is a decimal number (``sc-status: '404'``) also matches the
    number, as on the search stores, where a number field reads the query's text as a number
    (SQLite does not compare a JSON number equal to text). Only for items that need any one
    value: under ``|all`` an extra value would be one more condition."""

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> SigmaDetectionItem | None:
        if detection_item.field is None or detection_item.value_linking is not ConditionOR:
            return None
        numbers: list[SigmaType] = [
            SigmaNumber(float(text) if "." in text else int(text))
            for value in detection_item.value
            if type(value) is SigmaString
            and not value.contains_special()
            and _DECIMAL.fullmatch(text := str(value)) is not None
        ]
        if not numbers:
            return None
        detection_item.value = [*detection_item.value, *numbers]
        return detection_item


@dataclass
class CidrOnAddressField(DetectionItemTransformation):
    """Points ``|cidr`` on an address field at its ``.ip`` sub-field: the search stores index
    addresses as keywords (exact values, prefixes) with an ``ip``-typed sub-field for ranges."""

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> SigmaDetectionItem | None:
        if detection_item.field in IP_FIELDS and all(
            isinstance(value, SigmaCIDRExpression) for value in detection_item.value
        ):
            detection_item.field = f"{detection_item.field}.ip"
            return detection_item
        return None


def onegate_pipeline(*, lucene: bool) -> ProcessingPipeline:
    """The pipeline for one backend: ``lucene`` for the search stores (adds the ``.ip`` sub-field
    for address ranges), else for SQL."""

    def web() -> list[RuleProcessingCondition]:  # a condition belongs to one item: new ones each time
        return [LogsourceCondition(category="webserver"), LogsourceCondition(category="proxy")]

    mapping: dict[str | None, str | list[str]] = {name: target for name, target in WEB_FIELDS.items()}
    items: list[ProcessingItem] = [
        ProcessingItem(identifier="onegate_logsource", transformation=RefuseUnknownLogsource()),
        ProcessingItem(
            identifier="onegate_web_fields",
            transformation=FieldMappingTransformation(mapping),
            rule_conditions=web(),
            rule_condition_linking=any,
        ),
        ProcessingItem(identifier="onegate_known_fields", transformation=RefuseUnknownFields()),
        ProcessingItem(identifier="onegate_caseless", transformation=CaselessStrings()),
        ProcessingItem(
            identifier="onegate_web_access",
            transformation=AddConditionTransformation({"event.action": "access"}),
            rule_conditions=web(),
            rule_condition_linking=any,
        ),
        ProcessingItem(
            identifier="onegate_authentication",
            transformation=AddConditionTransformation({"event.category": "authentication"}),
            rule_conditions=[LogsourceCondition(category="authentication")],
        ),
    ]
    for service, datasets in _DATASETS.items():
        items.append(
            ProcessingItem(
                identifier=f"onegate_service_{service}",
                transformation=AddConditionTransformation({"event.dataset": list(datasets)}),
                rule_conditions=[LogsourceCondition(product="onegate", service=service)],
            )
        )
    if lucene:
        items.append(ProcessingItem(identifier="onegate_cidr", transformation=CidrOnAddressField()))
    else:
        items.append(ProcessingItem(identifier="onegate_numbers", transformation=NumberStringsAsNumbers()))
    return ProcessingPipeline(name="OneGate ECS events", priority=20, items=items)
