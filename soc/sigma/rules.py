"""Sigma rules from a folder: parsed by pySigma, compiled for every store, run as scheduled rules.

:func:`load_folder` reads every ``*.yml`` / ``*.yaml`` file of a folder (a file may hold several
YAML documents: a correlation rule and the rules it references, as SigmaHQ writes them) and
returns the rules it could compile and one :class:`LoadError` per problem, naming the file and
quoting pySigma's message; a bad file never stops the others.

Each detection rule is compiled three times through :func:`soc.sigma.pipeline.onegate_pipeline`:
to Lucene with ``pysigma-backend-opensearch`` (for :class:`~soc.stores.search.OpenSearchEventStore`)
and with ``pysigma-backend-elasticsearch`` (for the Elasticsearch store; today both write the same
text), and to SQL with ``pysigma-backend-sqlite`` as :mod:`soc.sigma.sql` adapts it (its condition,
for the SQLite store). The texts
stay on the rule (:attr:`SigmaRule.queries`) so ``onegate soc rules test`` can print them. A
correlation rule is evaluated by :mod:`soc.sigma.correlate` over its referenced rules' matches.

The rule's :class:`~soc.detections.model.RuleInfo`: id ``sigma.<Sigma id>`` (or a slug of the
title), name from ``title`` (Chinese from the custom field ``x-onegate-name-zh``), severity and
risk score from ``level``, ATT&CK technique and tactic from the ``attack.*`` tags, ``suppress_by``
from the correlation's ``group-by`` (or ``x-onegate-suppress-by``), kind ``scheduled`` with the
parameters ``interval_s`` (``x-onegate-interval``, default 300) and ``lookback_s``
(``x-onegate-lookback``, default 900, at least the correlation's timespan).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sigma.backends.elasticsearch.elasticsearch_lucene import LuceneBackend
from sigma.backends.opensearch.opensearch import OpensearchLuceneBackend
from sigma.collection import SigmaCollection
from sigma.conversion.base import Backend
from sigma.correlations import SigmaCorrelationCondition, SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaLevel, SigmaLogSource
from sigma.rule import SigmaRule as ParsedRule
from sigma.rule.base import SigmaRuleBase

from core.eventstore import MAX_SIZE, EventStore, NativeQuery
from core.logging import get_logger
from soc.detections.model import RuleInfo, Severity, Text
from soc.sigma.correlate import Correlation, Match, correlate
from soc.sigma.pipeline import map_field, onegate_pipeline
from soc.sigma.sql import EachElementSql

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_LOOKBACK", "LoadError", "SigmaRule", "compile_rule", "load_folder"]

DEFAULT_INTERVAL = 300
DEFAULT_LOOKBACK = 900
_SQL_TABLE = "sigma_events"
_log = get_logger("onegate.soc.sigma")
_SQL_PREFIX = f"SELECT * FROM {_SQL_TABLE} WHERE "  # noqa: S608 - the backend's statement, read not run

# Sigma level -> (severity, risk score): the scores Elastic's prebuilt rules use per severity.
_LEVELS: dict[SigmaLevel | None, tuple[Severity, int]] = {
    None: (Severity.MEDIUM, 47),
    SigmaLevel.INFORMATIONAL: (Severity.LOW, 10),
    SigmaLevel.LOW: (Severity.LOW, 21),
    SigmaLevel.MEDIUM: (Severity.MEDIUM, 47),
    SigmaLevel.HIGH: (Severity.HIGH, 73),
    SigmaLevel.CRITICAL: (Severity.CRITICAL, 99),
}
_TACTICS = frozenset(
    (
        "reconnaissance",
        "resource-development",
        "initial-access",
        "execution",
        "persistence",
        "privilege-escalation",
        "defense-evasion",
        "credential-access",
        "discovery",
        "lateral-movement",
        "collection",
        "command-and-control",
        "exfiltration",
        "impact",
    )
)
_TECHNIQUE = re.compile(r"t(\d{4})(?:\.(\d{3}))?")
_TIMESPAN = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class LoadError:
    """A file, or one rule of it, that could not be loaded."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class SigmaRule:
    """A loaded Sigma rule, ready to run on any store.

    ``native`` holds a detection rule's compiled texts; ``correlation`` and ``parts`` (the
    referenced rules) a correlation rule's. ``standalone`` is False for a rule that a correlation
    references without ``generate: true``: it runs only as part of that correlation."""

    info: RuleInfo
    title: str
    file: str
    sigma_id: str | None
    sigma_name: str | None
    native: NativeQuery | None = None
    correlation: Correlation | None = None
    parts: tuple[SigmaRule, ...] = ()
    standalone: bool = True
    logsource: SigmaLogSource | None = field(default=None, repr=False)
    custom: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def queries(self) -> dict[str, str]:
        """Store name -> the compiled text (a correlation: each referenced rule's, by its id)."""
        if self.native is not None:
            return dict(self.native.texts)
        return {
            f"{part.info.id} {store}": text for part in self.parts for store, text in part.queries.items()
        }

    async def test(
        self,
        store: EventStore,
        start: datetime,
        end: datetime,
        *,
        exclude: Collection[str] = (),
        size: int = MAX_SIZE,
    ) -> list[Match]:
        """The rule's matches among the events of ``store`` with ``start`` <= time < ``end``:
        one per matching event for a detection rule, one per window that meets the condition for a
        correlation. Events whose ids are in ``exclude`` are left out (already reported)."""
        if self.native is not None:
            found = await store.native_search(self.native, start, end, size)
            if found.total > len(found.hits):
                _log.warning(
                    "sigma rule matched more events than one search returns",
                    rule=self.info.id,
                    total=found.total,
                    returned=len(found.hits),
                )
            return [Match((hit,)) for hit in found.hits if hit.get("event.id") not in exclude]
        if self.correlation is None:
            raise ValueError(f"{self.info.id} has neither a compiled query nor a correlation")
        hits: dict[str, list[dict[str, Any]]] = {}
        for part in self.parts:
            matches = await part.test(store, start, end, exclude=exclude, size=size)
            hits[part.info.id] = [match.completing for match in matches]
        return correlate(self.correlation, hits)


# -- compiling ------------------------------------------------------------------------------------


def _backends() -> dict[str, Backend]:
    return {
        "opensearch": OpensearchLuceneBackend(onegate_pipeline(lucene=True)),
        "elasticsearch": LuceneBackend(onegate_pipeline(lucene=True)),
        "sqlite": EachElementSql(onegate_pipeline(lucene=False), table=_SQL_TABLE),  # type: ignore[no-untyped-call]
    }


def _fields(detection: SigmaDetection | SigmaDetectionItem, into: dict[str, None]) -> None:
    if isinstance(detection, SigmaDetection):
        for item in detection.detection_items:
            _fields(item, into)
    elif detection.field is not None:
        into[detection.field] = None


def compile_rule(rule: ParsedRule) -> NativeQuery:
    """``rule`` in every store's language; SigmaError (from the pipeline or a backend) when it
    cannot be."""
    texts: dict[str, str] = {}
    fields: dict[str, None] = {}
    for store, backend in _backends().items():
        work = copy.deepcopy(rule)  # the pipeline changes the rule it converts
        work._output = True  # a rule a correlation references converts like any other
        converted = backend.convert_rule(work)
        if len(converted) != 1 or not isinstance(converted[0], str):
            raise SigmaError(f"the {store} backend gave {len(converted)} queries instead of one")
        text = converted[0]
        if store == "sqlite":
            if not text.startswith(_SQL_PREFIX):
                raise SigmaError("the SQL backend wrote a statement of an unexpected form")
            text = text[len(_SQL_PREFIX) :]
            for detection in work.detection.detections.values():
                _fields(detection, fields)
        texts[store] = text
    return NativeQuery(texts=texts, fields=tuple(fields))


# -- rule metadata --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "rule"


def _seconds(value: Any, name: str) -> int:
    """A custom interval: whole seconds, or a Sigma-style timespan (``5m``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    found = _TIMESPAN.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or int(found.group(1)) <= 0:
        raise SigmaError(f"{name} must be seconds or a timespan like 5m, got {value!r}")
    return int(found.group(1)) * _UNIT[found.group(2)]


def _attack(tags: list[Any]) -> tuple[str, str]:
    technique = tactic = ""
    for tag in tags:
        if tag.namespace != "attack":
            continue
        name = str(tag.name).lower()
        number = _TECHNIQUE.fullmatch(name)
        if number is not None and not technique:
            technique = f"T{number.group(1)}" + (f".{number.group(2)}" if number.group(2) else "")
        elif name in _TACTICS and not tactic:
            tactic = name
    return technique, tactic


def _info(
    parsed: SigmaRuleBase,
    *,
    suppress_by: tuple[str, ...],
    timespan_s: int = 0,
) -> RuleInfo:
    custom = parsed.custom_attributes
    title = parsed.title or "untitled"
    rule_id = f"sigma.{parsed.id}" if parsed.id is not None else f"sigma.{_slug(parsed.name or title)}"
    severity, risk = _LEVELS.get(parsed.level, _LEVELS[None])
    technique, tactic = _attack(parsed.tags or [])
    interval = _seconds(custom.get("x-onegate-interval", DEFAULT_INTERVAL), "x-onegate-interval")
    lookback = _seconds(custom.get("x-onegate-lookback", DEFAULT_LOOKBACK), "x-onegate-lookback")
    own = custom.get("x-onegate-suppress-by")
    if own is not None:
        names = [own] if isinstance(own, str) else own
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SigmaError("x-onegate-suppress-by names one to three fields")
        suppress_by = tuple(names)
    if not 1 <= len(suppress_by) <= 3:
        raise SigmaError(
            "suppression needs one to three fields: group by fewer, or set x-onegate-suppress-by"
        )
    description = parsed.description or title
    return RuleInfo(
        id=rule_id,
        name=Text(en=title, zh=str(custom.get("x-onegate-name-zh") or title)),
        description=Text(en=description, zh=str(custom.get("x-onegate-description-zh") or description)),
        severity=severity,
        risk_score=risk,
        technique=technique,
        tactic=tactic,
        suppress_by=suppress_by,
        kind="scheduled",
        params={"interval_s": interval, "lookback_s": max(lookback, timespan_s)},
    )


def _default_suppress(parsed: ParsedRule) -> tuple[str, ...]:
    if parsed.logsource.category in ("webserver", "proxy"):
        return ("source.ip",)
    return ("user.name",)


def _correlation(parsed: SigmaCorrelationRule, parts: list[SigmaRule]) -> Correlation:
    if len(parsed.aliases):
        raise SigmaError("correlation field aliases are not supported")
    condition = parsed.condition
    if not isinstance(condition, SigmaCorrelationCondition):
        raise SigmaError("extended (string) correlation conditions are not supported")

    def ecs(name: str) -> str:
        # the ECS field under every referenced rule's log source: they must agree
        mapped = {tuple(map_field(name, part.logsource)) for part in parts}
        if len(mapped) != 1 or len(found := next(iter(mapped))) != 1:
            raise SigmaError(f"field {name!r} does not name one ECS field for every referenced rule")
        return found[0]

    field_ref = condition.fieldref
    if isinstance(field_ref, list):
        if len(field_ref) != 1:
            raise SigmaError("a correlation condition names one field")
        field_ref = field_ref[0]
    return Correlation(
        kind=str(parsed.type.name).lower(),
        rules=tuple(part.info.id for part in parts),
        group_by=tuple(ecs(name) for name in parsed.group_by or ()),
        timespan_s=int(parsed.timespan.seconds),
        op=condition.op.name.lower(),
        count=int(condition.count),
        field=ecs(field_ref) if field_ref else None,
    )


# -- loading --------------------------------------------------------------------------------------


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def load_folder(path: str | Path) -> tuple[list[SigmaRule], list[LoadError]]:
    """Every rule of the folder's ``*.yml`` / ``*.yaml`` files (sorted by name), and the errors."""
    folder = Path(path)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yml", ".yaml"))
    errors: list[LoadError] = []
    parsed_by_file: list[tuple[str, list[SigmaRuleBase]]] = []
    for file in files:
        name = file.name
        try:
            collection = SigmaCollection.from_yaml(
                file.read_text(encoding="utf-8"), collect_errors=True, resolve_references=False
            )
        except (yaml.YAMLError, UnicodeDecodeError, OSError, SigmaError) as e:
            errors.append(LoadError(name, f"not a readable Sigma YAML file: {_describe(e)}"))
            continue
        broken = [
            f"{rule.title or 'untitled'}: {_describe(error)}"
            for rule in collection.rules
            for error in rule.errors
        ]
        broken += [_describe(error) for error in collection.errors]
        if broken:
            errors.extend(LoadError(name, message) for message in broken)
            continue
        parsed_by_file.append((name, list(collection.rules)))

    loaded: dict[str, SigmaRule] = {}  # by RuleInfo id
    by_reference: dict[str, SigmaRule] = {}  # Sigma id and name -> the detection rule
    correlations: list[tuple[str, SigmaCorrelationRule]] = []
    for name, rules in parsed_by_file:
        for parsed in rules:
            if isinstance(parsed, SigmaCorrelationRule):
                correlations.append((name, parsed))
                continue
            if not isinstance(parsed, ParsedRule):
                errors.append(LoadError(name, f"{parsed.title}: only rules and correlations are supported"))
                continue
            try:
                native = compile_rule(parsed)
                info = _info(parsed, suppress_by=_default_suppress(parsed))
            except (SigmaError, ValueError) as e:
                errors.append(LoadError(name, f"{parsed.title}: {_describe(e)}"))
                continue
            if info.id in loaded:
                errors.append(
                    LoadError(name, f"{parsed.title}: the id {info.id} is taken by {loaded[info.id].file}")
                )
                continue
            rule = SigmaRule(
                info=info,
                title=parsed.title,
                file=name,
                sigma_id=str(parsed.id) if parsed.id is not None else None,
                sigma_name=parsed.name,
                native=native,
                logsource=parsed.logsource,
                custom=dict(parsed.custom_attributes),
            )
            loaded[info.id] = rule
            for key in (rule.sigma_id, rule.sigma_name):
                if key:
                    by_reference[key] = rule

    for name, parsed in correlations:
        try:
            parts = []
            for ref in parsed.rules or []:
                part = by_reference.get(ref.reference)
                if part is None:
                    raise SigmaError(f"the referenced rule {ref.reference!r} is not loaded")
                parts.append(part)
            correlation = _correlation(parsed, parts)
            info = _info(
                parsed,
                suppress_by=correlation.group_by or ("source.ip",),
                timespan_s=correlation.timespan_s,
            )
        except (SigmaError, ValueError) as e:
            errors.append(LoadError(name, f"{parsed.title}: {_describe(e)}"))
            continue
        if info.id in loaded:
            errors.append(
                LoadError(name, f"{parsed.title}: the id {info.id} is taken by {loaded[info.id].file}")
            )
            continue
        for part in parts:
            if not parsed.generate:
                part.standalone = False
        loaded[info.id] = SigmaRule(
            info=info,
            title=parsed.title,
            file=name,
            sigma_id=str(parsed.id) if parsed.id is not None else None,
            sigma_name=parsed.name,
            correlation=correlation,
            parts=tuple(parts),
            custom=dict(parsed.custom_attributes),
        )
    return list(loaded.values()), errors
