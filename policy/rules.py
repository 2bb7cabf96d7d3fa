"""Policy bundles: YAML an admin can read and review, loaded into plain data with line numbers.

A bundle is one file (or a folder of files, one per application) of this shape (docs/policy.md
has the full reference)::

    version: 1
    timezone: Asia/Shanghai          # schedules are read in this zone
    zones:                           # named networks
      gov-intranet: [10.0.0.0/8, "fd00:6a::/32"]
    apps:
      hr:
        name: 人事管理 / HR
        hosts: [hr.example.gov]
        rules:
          - id: hr-staff
            effect: allow            # allow | deny | step_up
            paths: [/]               # prefixes (segment-wise) or globs with *
            methods: [GET, POST]
            subjects: {groups: [hr-staff], departments: [hr]}
            networks: [gov-intranet]
            schedule: {days: mon-fri, hours: "08:00-20:00"}
            max_risk: 60
        cedar: |                     # optional raw Cedar for what YAML cannot say
          permit (...);
    rules:                           # rules for several applications ("*": all of them)
      - {id: block-high-risk, effect: deny, apps: "*", min_risk: 80}

Loading checks structure and types and reports *every* problem at once, each with its file and
line (:class:`BundleError`); what needs the directory (unknown groups) and the analysis of the
rules against each other (shadowed, overlapping) is :mod:`policy.check`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from policy.model import ACR_NAMES, Effect, acr_rank
from policy.normalize import PathRejected, canonical_path

__all__ = [
    "DEFAULT_TIMEZONE",
    "App",
    "Bundle",
    "BundleError",
    "Finding",
    "PathPattern",
    "Rule",
    "Window",
    "glob_regex",
    "load_bundle",
    "load_path",
    "parse_duration",
]

DEFAULT_TIMEZONE = "Asia/Shanghai"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_METHOD = re.compile(r"^[A-Z][A-Z0-9_-]{0,31}$")
_HOST = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*(:\d{1,5})?$"
)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES = {"weekdays": "mon-fri", "workdays": "mon-fri", "weekend": "sat-sun", "everyday": "mon-sun"}
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SUBJECT_KINDS = ("users", "groups", "departments", "roles")
_RULE_KEYS = frozenset(
    {
        "id",
        "effect",
        "description",
        "paths",
        "not_paths",
        "methods",
        "subjects",
        "not_subjects",
        "anonymous",
        "acr",
        "max_auth_age",
        "networks",
        "not_networks",
        "schedule",
        "min_risk",
        "max_risk",
        "apps",
    }
)
_APP_KEYS = frozenset({"name", "description", "hosts", "host", "rules", "cedar", "owner"})
_BUNDLE_KEYS = frozenset({"version", "timezone", "zones", "apps", "rules", "app"})


# -- findings --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with a bundle. ``error``: the bundle cannot become active; ``warning``: it can,
    but an admin should look (a rule that can never take effect, an allow overlapping a deny)."""

    severity: str  # "error" | "warning"
    code: str
    message: str  # English
    message_zh: str
    source: str = ""
    line: int = 0
    rule_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        rule = f" [{self.rule_id}]" if self.rule_id else ""
        return f"{where}: {self.severity}: {self.code}{rule}: {self.message} / {self.message_zh}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "message_zh": self.message_zh,
            "source": self.source,
            "line": self.line,
            "rule_id": self.rule_id,
        }


class BundleError(ValueError):
    """A bundle that cannot be loaded; ``findings`` lists every error found, with lines."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("\n".join(str(f) for f in findings) or "invalid policy bundle")


# -- the loaded data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A rule path in canonical match-key form. ``glob``: ``*`` matches any run of characters
    (``/`` included, as Cedar's ``like``); otherwise a segment-wise prefix: ``/admin`` matches
    ``/admin``, ``/admin/`` and ``/admin/x`` but not ``/administrator``. ``/`` matches every path."""

    text: str  # as written in the bundle
    key: str  # canonical, lower case; a prefix has no trailing "/" ("" for the root)
    glob: bool

    def matches(self, path: str) -> bool:
        if self.glob:
            return glob_regex(self.key).fullmatch(path) is not None
        return path == self.key or path.startswith(self.key + "/")


_GLOBS: dict[str, re.Pattern[str]] = {}


def glob_regex(pattern: str) -> re.Pattern[str]:
    compiled = _GLOBS.get(pattern)
    if compiled is None:
        compiled = re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
        _GLOBS[pattern] = compiled
    return compiled


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly time window in the bundle's time zone. ``days`` are the weekdays a window *starts*
    on (0 = Monday); ``end <= start`` runs across midnight into the next day (a night shift that
    starts on Friday ends on Saturday morning). Minutes of the day; ``end`` may be 1440."""

    days: frozenset[int]
    start: int
    end: int

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def contains(self, weekday: int, minute: int) -> bool:
        if not self.overnight:
            return weekday in self.days and self.start <= minute < self.end
        if minute >= self.start:
            return weekday in self.days
        return minute < self.end and (weekday - 1) % 7 in self.days

    def __str__(self) -> str:
        days = ",".join(_DAYS[d] for d in sorted(self.days))
        return f"{days} {self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True, slots=True)
class Network:
    """A network condition entry: a CIDR, or a named zone (with the CIDRs it stands for)."""

    text: str
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; a condition left out (None or empty) does not restrict.

    ``apps`` is None for a bundle-wide rule that applies to every application (``apps: "*"``);
    a rule written under an application has just that one.
    """

    id: str
    effect: Effect
    apps: frozenset[str] | None
    description: str = ""
    paths: tuple[PathPattern, ...] = ()
    methods: frozenset[str] | None = None
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    not_paths: tuple[PathPattern, ...] = ()
    not_users: frozenset[str] = frozenset()
    not_groups: frozenset[str] = frozenset()
    not_departments: frozenset[str] = frozenset()
    not_roles: frozenset[str] = frozenset()
    anonymous: bool = False
    acr: str | None = None  # short name: pwd | mfa | phr
    max_auth_age: int | None = None
    networks: tuple[Network, ...] = ()
    not_networks: tuple[Network, ...] = ()
    schedule: tuple[Window, ...] = ()
    min_risk: int | None = None
    max_risk: int | None = None
    source: str = ""
    line: int = 0

    @property
    def has_subjects(self) -> bool:
        return bool(self.users or self.groups or self.departments or self.roles)

    @property
    def has_exceptions(self) -> bool:
        """Whether the rule names subjects it does not apply to (``not_subjects``)."""
        return bool(self.not_users or self.not_groups or self.not_departments or self.not_roles)

    @property
    def admits_anonymous(self) -> bool:
        """Whether the rule can match a request with no signed-in user: a rule naming subjects never
        does; an allow rule only with ``anonymous: true``; deny and step_up rules without subjects
        always do (a deny about a network must hold for everyone)."""
        if self.has_subjects:
            return False
        return self.anonymous or self.effect is not Effect.ALLOW

    @property
    def acr_rank(self) -> int:
        return acr_rank(self.acr)

    def applies_to(self, app: str) -> bool:
        return self.apps is None or app in self.apps


@dataclass(frozen=True, slots=True)
class App:
    name: str
    title: str = ""
    description: str = ""
    owner: str = ""
    hosts: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    cedar: str | None = None  # raw Cedar policies: the application is decided through cedarpy
    source: str = ""
    line: int = 0
    cedar_line: int = 0  # the bundle line the Cedar text starts on (0: unknown)


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle. ``rules_for(app)`` is every rule that applies to an application, in
    bundle order (bundle-wide rules first)."""

    apps: Mapping[str, App]
    global_rules: tuple[Rule, ...] = ()
    zones: Mapping[str, Network] = field(default_factory=dict)
    timezone: str = DEFAULT_TIMEZONE
    text: str = ""  # the source the bundle was loaded from (one file; folders joined)
    digest: str = ""  # sha256 of ``text``

    def rules_for(self, app: str) -> tuple[Rule, ...]:
        own = self.apps[app].rules if app in self.apps else ()
        return tuple(r for r in self.global_rules if r.applies_to(app)) + own

    def all_rules(self) -> tuple[Rule, ...]:
        return self.global_rules + tuple(r for a in self.apps.values() for r in a.rules)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.all_rules() if r.id == rule_id), None)


# -- YAML with line numbers ------------------------------------------------------------------


class _Map(dict[Any, Any]):
    line = 0
    lines: dict[Any, int]


class _List(list[Any]):
    line = 0
    lines: list[int]


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when present: three times faster on a large bundle) with the
    line-keeping constructors below."""


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | bool | float) or key is None:
            raise _DuplicateKey(None, None, "a mapping key must be a plain value", key_node.start_mark)
        if key in out:
            # PyYAML keeps the last of two equal keys silently: two "effect:" lines must not pass.
            raise _DuplicateKey(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_list(loader: _Loader, node: yaml.SequenceNode) -> _List:
    out = _List(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_list)


def parse_duration(value: Any) -> int:
    """Seconds from ``900``, ``"90s"``, ``"15m"``, ``"8h"`` or ``"1d"`` (ValueError otherwise)."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative duration")
        return value
    if isinstance(value, str):
        match = _DURATION.match(value.strip().lower())
        if match:
            return int(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"not a duration: {value!r}")


# -- the loader ------------------------------------------------------------------------------


class _Reader:
    """Turns the parsed YAML of one file into bundle parts, collecting every error found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.findings: list[Finding] = []

    def error(self, line: int, code: str, en: str, zh: str, rule_id: str | None = None) -> None:
        self.findings.append(Finding("error", code, en, zh, self.source, line, rule_id))

    @staticmethod
    def line_of(container: Any, key: Any, default: int = 0) -> int:
        if isinstance(container, _Map):
            return container.lines.get(key, container.line)
        if isinstance(container, _List) and isinstance(key, int) and key < len(container.lines):
            return container.lines[key]
        return getattr(container, "line", default) or default

    # Scalars and lists -------------------------------------------------------------------

    def strings(self, owner: _Map, key: str, rule_id: str | None, *, lower: bool = False) -> list[str]:
        """A string or a list of strings (an empty list is refused: write nothing instead)."""
        value = owner.get(key)
        line = self.line_of(owner, key)
        items = [value] if isinstance(value, str) else value
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(i, str) and i.strip() for i in items)
        ):
            self.error(
                line,
                "bad_value",
                f"'{key}' must be a non-empty string or list of strings",
                f"“{key}”须为非空字符串或字符串列表",
                rule_id,
            )
            return []
        return [i.strip().lower() if lower else i.strip() for i in items]

    def integer(self, owner: _Map, key: str, rule_id: str | None, low: int, high: int) -> int | None:
        value = owner.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(
                self.line_of(owner, key),
                "bad_value",
                f"'{key}' must be a whole number from {low} to {high}",
                f"“{key}”须为 {low} 至 {high} 的整数",
                rule_id,
            )
            return None
        return value

    def unknown_keys(self, owner: _Map, allowed: frozenset[str], what: str, rule_id: str | None) -> None:
        for key in owner:
            if key not in allowed:
                self.error(
                    self.line_of(owner, key),
                    "unknown_key",
                    f"unknown key '{key}' in {what} (allowed: {', '.join(sorted(allowed))})",
                    f"{what} 中有未知的键“{key}”（允许：{', '.join(sorted(allowed))}）",
                    rule_id,
                )

    # Parts -------------------------------------------------------------------------------

    def path(self, text: str, line: int, rule_id: str) -> PathPattern | None:
        # Rule paths are written as users see them ("/人事/"): encode, then canonicalise exactly as
        # a request is, so both meet in one form. "*" stays a wildcard.
        encoded = quote(text, safe="/*;:@!$&'()+,=-._~%")
        try:
            key = canonical_path(encoded).key
        except PathRejected as e:
            self.error(
                line,
                "bad_path",
                f"path {text!r} is not a valid request path ({e.reason.value})",
                f"路径 {text!r} 不是有效的请求路径（{e.reason.value}）",
                rule_id,
            )
            return None
        glob = "*" in key
        if not glob and key.endswith("/"):
            key = key.rstrip("/")
        return PathPattern(text=text, key=key, glob=glob)

    def network(
        self, text: str, line: int, zones: Mapping[str, Network], rule_id: str | None
    ) -> Network | None:
        if text in zones:
            return Network(text, zones[text].cidrs)
        try:
            return Network(text, (ipaddress.ip_network(text, strict=False),))
        except ValueError:
            self.error(
                line,
                "unknown_network",
                f"{text!r} is neither a CIDR nor a zone defined under 'zones'",
                f"{text!r} 既不是 CIDR 网段，也不是 zones 中定义的网络区域",
                rule_id,
            )
            return None

    def patterns(self, raw: _Map, key: str, rule_id: str) -> tuple[PathPattern, ...]:
        if key not in raw:
            return ()
        values = self.strings(raw, key, rule_id)
        items = raw[key] if isinstance(raw[key], _List) else None
        out = []
        for index, text in enumerate(values):
            where = self.line_of(items, index) if items is not None else self.line_of(raw, key)
            pattern = self.path(text, where, rule_id)
            if pattern is not None:
                out.append(pattern)
        return tuple(out)

    def subjects(self, raw: _Map, key: str, rule_id: str) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {kind: frozenset() for kind in _SUBJECT_KINDS}
        if key not in raw:
            return out
        block = raw[key]
        if not isinstance(block, _Map) or not block:
            self.error(
                self.line_of(raw, key),
                "bad_value",
                f"'{key}' is a mapping of users / groups / departments / roles",
                f"{key} 须为 users / groups / departments / roles 的映射",
                rule_id,
            )
            return out
        self.unknown_keys(block, frozenset(_SUBJECT_KINDS), f"{key} of rule {rule_id}", rule_id)
        for kind in _SUBJECT_KINDS:
            if kind in block:
                out[kind] = frozenset(self.strings(block, kind, rule_id))
        return out

    def windows(self, value: Any, line: int, rule_id: str) -> tuple[Window, ...]:
        entries = value if isinstance(value, list) else [value]
        out: list[Window] = []
        for index, entry in enumerate(entries):
            where = self.line_of(entries, index, line) if isinstance(entries, _List) else line
            if not isinstance(entry, _Map) or set(entry) - {"days", "hours"} or not entry:
                self.error(
                    where,
                    "bad_schedule",
                    "a schedule entry is a mapping with 'days' and/or 'hours'",
                    "时段须为含 days 和/或 hours 的映射",
                    rule_id,
                )
                continue
            days = self.days(entry.get("days", "mon-sun"), self.line_of(entry, "days", where), rule_id)
            hours = self.hours(
                entry.get("hours", "00:00-24:00"), self.line_of(entry, "hours", where), rule_id
            )
            if days is not None and hours is not None:
                out.append(Window(days, *hours))
        return tuple(out)

    def days(self, value: Any, line: int, rule_id: str) -> frozenset[int] | None:
        parts: list[Any] = value if isinstance(value, list) else str(value).split(",")
        days: set[int] = set()
        for part in parts:
            text = _DAY_ALIASES.get(str(part).strip().lower(), str(part).strip().lower())
            first, _, last = text.partition("-")
            if first not in _DAYS or (last and last not in _DAYS):
                self.error(
                    line,
                    "bad_schedule",
                    f"unknown day {part!r} (mon..sun, ranges such as mon-fri, 'weekdays', 'weekend')",
                    f"无法识别的日期 {part!r}（mon..sun、mon-fri 之类的范围、weekdays、weekend）",
                    rule_id,
                )
                return None
            start, end = _DAYS.index(first), _DAYS.index(last or first)
            day = start
            while True:  # a range may wrap: fri-mon
                days.add(day)
                if day == end:
                    break
                day = (day + 1) % 7
        return frozenset(days)

    def hours(self, value: Any, line: int, rule_id: str) -> tuple[int, int] | None:
        match = _HOURS.match(value.strip()) if isinstance(value, str) else None
        if match:
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if h1 < 24 and m1 < 60 and m2 < 60 and (h2 < 24 or (h2 == 24 and m2 == 0)) and start != end:
                return start, end
        self.error(
            line,
            "bad_schedule",
            f'hours must look like "08:00-18:00" ("22:00-06:00" runs across midnight), not {value!r}',
            f'hours 须形如 "08:00-18:00"（"22:00-06:00" 表示跨零点），而不是 {value!r}',
            rule_id,
        )
        return None

    def rule(
        self, raw: Any, line: int, app: str | None, zones: Mapping[str, Network], seen: dict[str, int]
    ) -> Rule | None:
        if not isinstance(raw, _Map):
            self.error(line, "bad_rule", "a rule must be a mapping", "规则须为映射")
            return None
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not _ID.match(rule_id):
            self.error(
                self.line_of(raw, "id"),
                "bad_id",
                "every rule needs an 'id': letters, digits and . _ : - (at most 64)",
                "每条规则都需要 id：字母、数字及 . _ : -（不超过 64 个字符）",
            )
            return None
        if rule_id in seen:
            self.error(
                self.line_of(raw, "id"),
                "duplicate_id",
                f"rule id {rule_id!r} is already used at line {seen[rule_id]}",
                f"规则 id {rule_id!r} 已在第 {seen[rule_id]} 行使用",
                rule_id,
            )
        seen.setdefault(rule_id, raw.line)
        errors_before = len(self.findings)
        self.unknown_keys(raw, _RULE_KEYS, f"rule {rule_id}", rule_id)

        effect: Effect | None = None
        try:
            effect = Effect(str(raw.get("effect")))
        except ValueError:
            self.error(
                self.line_of(raw, "effect"),
                "bad_effect",
                "'effect' must be allow, deny or step_up",
                "effect 须为 allow、deny 或 step_up",
                rule_id,
            )

        apps: frozenset[str] | None
        if app is not None:
            apps = frozenset({app})
            if "apps" in raw:
                self.error(
                    self.line_of(raw, "apps"),
                    "unknown_key",
                    "'apps' belongs to bundle-wide rules; this rule is under an application",
                    "apps 只用于全局规则；这条规则已写在某个应用之下",
                    rule_id,
                )
        elif raw.get("apps") == "*":
            apps = None
        elif "apps" in raw:
            apps = frozenset(self.strings(raw, "apps", rule_id))
        else:
            apps = None
            self.error(
                raw.line,
                "missing_apps",
                "a bundle-wide rule needs 'apps' (a list, or \"*\" for every application)",
                '全局规则须写明 apps（应用列表，或用 "*" 表示全部应用）',
                rule_id,
            )

        paths = self.patterns(raw, "paths", rule_id)
        not_paths = self.patterns(raw, "not_paths", rule_id)

        methods: frozenset[str] | None = None
        if "methods" in raw:
            names = [m.upper() for m in self.strings(raw, "methods", rule_id)]
            for name in names:
                if not _METHOD.match(name):
                    self.error(
                        self.line_of(raw, "methods"),
                        "bad_method",
                        f"{name!r} is not an HTTP method",
                        f"{name!r} 不是 HTTP 方法",
                        rule_id,
                    )
            methods = frozenset(names) if "*" not in names else None

        subjects = self.subjects(raw, "subjects", rule_id)
        exceptions = self.subjects(raw, "not_subjects", rule_id)

        anonymous = raw.get("anonymous", False)
        if not isinstance(anonymous, bool):
            self.error(
                self.line_of(raw, "anonymous"),
                "bad_value",
                "'anonymous' is true or false",
                "anonymous 须为 true 或 false",
                rule_id,
            )
            anonymous = False
        if anonymous and (effect is not Effect.ALLOW or any(subjects.values())):
            self.error(
                self.line_of(raw, "anonymous"),
                "bad_anonymous",
                "'anonymous: true' is for allow rules without subjects (public paths)",
                "anonymous: true 只用于不限定主体的 allow 规则（公开路径）",
                rule_id,
            )

        acr: str | None = None
        if "acr" in raw:
            value = raw["acr"]
            rank = acr_rank(value) if isinstance(value, str) else 0
            if not rank:
                self.error(
                    self.line_of(raw, "acr"),
                    "bad_acr",
                    f"'acr' must be one of {', '.join(ACR_NAMES)} (or its urn:onegate:acr: URN)",
                    f"acr 须为 {', '.join(ACR_NAMES)} 之一（或对应的 urn:onegate:acr: URN）",
                    rule_id,
                )
            else:
                acr = ACR_NAMES[rank - 1]

        max_auth_age: int | None = None
        if "max_auth_age" in raw:
            try:
                max_auth_age = parse_duration(raw["max_auth_age"])
            except ValueError:
                self.error(
                    self.line_of(raw, "max_auth_age"),
                    "bad_value",
                    "'max_auth_age' is a duration: seconds, or 90s / 15m / 8h / 1d",
                    "max_auth_age 为时长：秒数，或 90s / 15m / 8h / 1d",
                    rule_id,
                )
        if effect is Effect.DENY and (acr or max_auth_age is not None):
            self.error(
                self.line_of(raw, "acr" if "acr" in raw else "max_auth_age"),
                "bad_condition",
                "a deny rule cannot ask for an authentication level; use a step_up rule",
                "deny 规则不能要求认证强度；请使用 step_up 规则",
                rule_id,
            )
        if effect is Effect.STEP_UP and acr is None and max_auth_age is None:
            self.error(
                raw.line,
                "bad_step_up",
                "a step_up rule needs 'acr' and/or 'max_auth_age' (what to ask for)",
                "step_up 规则须写明 acr 和/或 max_auth_age（要求什么）",
                rule_id,
            )

        networks: dict[str, tuple[Network, ...]] = {"networks": (), "not_networks": ()}
        for key in networks:
            if key in raw:
                items = raw[key] if isinstance(raw[key], _List) else None
                found = []
                for index, text in enumerate(self.strings(raw, key, rule_id)):
                    where = self.line_of(items, index) if items is not None else self.line_of(raw, key)
                    net = self.network(text, where, zones, rule_id)
                    if net is not None:
                        found.append(net)
                networks[key] = tuple(found)

        schedule: tuple[Window, ...] = ()
        if "schedule" in raw:
            schedule = self.windows(raw["schedule"], self.line_of(raw, "schedule"), rule_id)

        risks: dict[str, int | None] = {"min_risk": None, "max_risk": None}
        for key in risks:
            if key in raw:
                risks[key] = self.integer(raw, key, rule_id, 0, 100)

        description = raw.get("description", "")
        if not isinstance(description, str):
            self.error(
                self.line_of(raw, "description"),
                "bad_value",
                "'description' is text",
                "description 须为文本",
                rule_id,
            )
            description = ""

        if len(self.findings) > errors_before or effect is None:
            return None
        return Rule(
            id=rule_id,
            effect=effect,
            apps=apps,
            description=description,
            paths=tuple(paths),
            methods=methods,
            users=subjects["users"],
            groups=subjects["groups"],
            departments=subjects["departments"],
            roles=subjects["roles"],
            not_paths=not_paths,
            not_users=exceptions["users"],
            not_groups=exceptions["groups"],
            not_departments=exceptions["departments"],
            not_roles=exceptions["roles"],
            anonymous=anonymous,
            acr=acr,
            max_auth_age=max_auth_age,
            networks=networks["networks"],
            not_networks=networks["not_networks"],
            schedule=schedule,
            min_risk=risks["min_risk"],
            max_risk=risks["max_risk"],
            source=self.source,
            line=raw.line,
        )

    def rules(
        self, owner: _Map, app: str | None, zones: Mapping[str, Network], seen: dict[str, int]
    ) -> tuple[Rule, ...]:
        raw = owner.get("rules")
        if raw is None:
            return ()
        if not isinstance(raw, _List):
            self.error(self.line_of(owner, "rules"), "bad_value", "'rules' must be a list", "rules 须为列表")
            return ()
        out = []
        for index, item in enumerate(raw):
            rule = self.rule(item, raw.lines[index], app, zones, seen)
            if rule is not None:
                out.append(rule)
        return tuple(out)

    def app(
        self, name: Any, raw: Any, line: int, zones: Mapping[str, Network], seen: dict[str, int]
    ) -> App | None:
        if not isinstance(name, str) or not _ID.match(name):
            self.error(
                line,
                "bad_app",
                f"application name {name!r}: letters, digits and . _ : -",
                f"应用名 {name!r} 只能包含字母、数字及 . _ : -",
            )
            return None
        if not isinstance(raw, _Map):
            self.error(line, "bad_app", f"application {name} must be a mapping", f"应用 {name} 须为映射")
            return None
        self.unknown_keys(raw, _APP_KEYS, f"application {name}", None)
        hosts: list[str] = []
        for key in ("host", "hosts"):
            if key in raw:
                for host in self.strings(raw, key, None, lower=True):
                    if not _HOST.match(host):
                        self.error(
                            self.line_of(raw, key),
                            "bad_host",
                            f"{host!r} is not a host name",
                            f"{host!r} 不是有效的主机名",
                        )
                    hosts.append(host)
        cedar = raw.get("cedar")
        if cedar is not None and (not isinstance(cedar, str) or not cedar.strip()):
            self.error(
                self.line_of(raw, "cedar"),
                "bad_value",
                "'cedar' holds Cedar policy text",
                "cedar 须为 Cedar 策略文本",
            )
            cedar = None
        cedar_line = 0
        if cedar is not None:  # a block scalar (``cedar: |``) starts on the line after its key
            cedar_line = self.line_of(raw, "cedar") + ("\n" in cedar.rstrip("\n"))
        texts = {key: raw.get(key, "") for key in ("name", "description", "owner")}
        return App(
            name=name,
            title=str(texts["name"] or ""),
            description=str(texts["description"] or ""),
            owner=str(texts["owner"] or ""),
            hosts=tuple(hosts),
            rules=self.rules(raw, name, zones, seen),
            cedar=cedar,
            source=self.source,
            line=raw.line,
            cedar_line=cedar_line,
        )


@dataclass
class _Parts:
    apps: dict[str, App] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    zones: dict[str, Network] = field(default_factory=dict)
    timezone: str | None = None


def _read_file(text: str, parts: _Parts, seen: dict[str, int], reader: _Reader) -> None:
    try:
        # Several documents ("---") are several files: how a folder is stored as one text.
        documents = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        reader.error(line, "yaml", f"not valid YAML: {e.problem or e}", f"不是有效的 YAML：{e.problem or e}")
        return
    except yaml.YAMLError as e:
        reader.error(0, "yaml", f"not valid YAML: {e}", f"不是有效的 YAML：{e}")
        return
    for data in documents:
        if data is not None:
            _read_document(data, parts, seen, reader)


def _read_document(data: Any, parts: _Parts, seen: dict[str, int], reader: _Reader) -> None:
    if not isinstance(data, _Map):
        reader.error(
            1,
            "bad_bundle",
            "a policy file is a mapping (version, zones, apps, rules)",
            "策略文件须为映射（version、zones、apps、rules）",
        )
        return
    reader.unknown_keys(data, _BUNDLE_KEYS | _APP_KEYS if "app" in data else _BUNDLE_KEYS, "the bundle", None)
    if data.get("version", 1) != 1:
        reader.error(
            data.lines.get("version", 1),
            "bad_version",
            "only 'version: 1' is understood",
            "只支持 version: 1",
        )

    if "timezone" in data:
        tz = data["timezone"]
        try:
            if not isinstance(tz, str):
                raise zoneinfo.ZoneInfoNotFoundError(str(tz))
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            reader.error(
                data.lines["timezone"], "bad_timezone", f"unknown time zone {tz!r}", f"未知的时区 {tz!r}"
            )
        else:
            if parts.timezone not in (None, tz):
                reader.error(
                    data.lines["timezone"],
                    "bad_timezone",
                    f"time zone {tz!r} differs from {parts.timezone!r} in another file",
                    f"时区 {tz!r} 与其他文件中的 {parts.timezone!r} 不一致",
                )
            parts.timezone = tz

    zones = data.get("zones")
    if zones is None:
        zones = _Map()
        zones.lines = {}
    elif not isinstance(zones, _Map):
        reader.error(
            data.lines.get("zones", 1),
            "bad_value",
            "'zones' maps names to CIDR lists",
            "zones 须为名称到 CIDR 列表的映射",
        )
        zones = _Map()
        zones.lines = {}
    for name in zones:
        line = zones.lines[name]
        if not isinstance(name, str) or not _ID.match(name):
            reader.error(
                line,
                "bad_zone",
                f"zone name {name!r}: letters, digits and . _ : -",
                f"网络区域名 {name!r} 只能包含字母、数字及 . _ : -",
            )
            continue
        if name in parts.zones:
            reader.error(
                line, "duplicate_zone", f"zone {name!r} is defined twice", f"网络区域 {name!r} 重复定义"
            )
            continue
        cidrs = []
        for text in reader.strings(zones, name, None):
            try:
                cidrs.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                reader.error(
                    line,
                    "bad_cidr",
                    f"{text!r} in zone {name} is not a CIDR",
                    f"网络区域 {name} 中的 {text!r} 不是 CIDR 网段",
                )
        parts.zones[name] = Network(name, tuple(cidrs))

    apps = data.get("apps")
    if apps is None:
        apps = _Map()
        apps.lines = {}
    if "app" in data:  # one file per application: "app: hr" at the top, its keys beside it
        app_block = _Map({k: v for k, v in data.items() if k in _APP_KEYS})
        app_block.line = data.line
        app_block.lines = {k: data.lines[k] for k in app_block}
        if "apps" in data or not isinstance(data["app"], str):
            reader.error(
                data.lines["app"],
                "bad_bundle",
                "a per-application file has 'app: NAME' and no 'apps'",
                "单应用文件使用 app: 名称，不能同时写 apps",
            )
            return
        apps = _Map({data["app"]: app_block})
        apps.lines = {data["app"]: data.lines["app"]}
        data = _Map({k: v for k, v in data.items() if k not in _APP_KEYS and k != "rules"})
        data.lines = {}
    if not isinstance(apps, _Map):
        reader.error(
            data.lines.get("apps", 1),
            "bad_value",
            "'apps' maps application names to their rules",
            "apps 须为应用名到其规则的映射",
        )
        apps = {}
    for name, raw in apps.items():
        line = apps.lines.get(name, 0) if isinstance(apps, _Map) else 0
        if name in parts.apps:
            reader.error(
                line, "duplicate_app", f"application {name!r} is defined twice", f"应用 {name!r} 重复定义"
            )
            continue
        app = reader.app(name, raw, line, parts.zones, seen)
        if app is not None:
            parts.apps[name] = app
    parts.rules.extend(reader.rules(data, None, parts.zones, seen))


def load_bundle(text: str | Iterable[tuple[str, str]], source: str = "policy.yaml") -> Bundle:
    """Load a bundle from YAML text, or from ``(source name, text)`` pairs (one file per
    application). Raises :class:`BundleError` listing every error with its line."""
    files = [(source, text)] if isinstance(text, str) else list(text)
    parts, seen = _Parts(), dict[str, int]()
    findings: list[Finding] = []
    for name, body in files:
        reader = _Reader(name)
        _read_file(body, parts, seen, reader)
        findings.extend(reader.findings)
    hosts: dict[str, str] = {}
    for app in parts.apps.values():
        for host in app.hosts:
            if host in hosts and hosts[host] != app.name:
                findings.append(
                    Finding(
                        "error",
                        "duplicate_host",
                        f"host {host} belongs to both {hosts[host]} and {app.name}",
                        f"主机 {host} 同时属于 {hosts[host]} 和 {app.name}",
                        app.source,
                        app.line,
                    )
                )
            hosts[host] = app.name
    if findings:
        raise BundleError(findings)
    joined = (
        files[0][1]
        if len(files) == 1
        else "\n".join(f"--- # {name}\n{body.removeprefix('---').lstrip(chr(10))}" for name, body in files)
    )
    return Bundle(
        apps=dict(parts.apps),
        global_rules=tuple(parts.rules),
        zones=dict(parts.zones),
        timezone=parts.timezone or DEFAULT_TIMEZONE,
        text=joined,
        digest=hashlib.sha256(joined.encode()).hexdigest(),
    )


def load_path(path: Path) -> Bundle:
    """A bundle from a file, or from every ``*.yaml`` / ``*.yml`` file of a folder (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        return load_bundle([(str(p), p.read_text(encoding="utf-8")) for p in files])
    return load_bundle(path.read_text(encoding="utf-8"), str(path))
