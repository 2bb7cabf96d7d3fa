"""Cedar: every bundle stated as Cedar policies, and cedarpy as a second decider.

The YAML rules are translated one Cedar policy per rule (:func:`to_cedar`, what ``onegate policy
compile --cedar`` prints); cedarpy decides that text with the same combining algorithm as the
compiled evaluator (:class:`CedarPolicy`), and the property tests hold the two to the same
answers. Applications whose admins need more than YAML can say carry raw Cedar (``cedar:`` in the
bundle), decided here too (:class:`RawCedarApp`).

The schema every policy is written against (:data:`SCHEMA`):

* principal ``User::"<name>"``, whose parents are ``Group::"<g>"``, ``Department::"<d>"`` (the
  user's department and every one above it) and ``Role::"<r>"``; a request with no signed-in user
  has the principal ``Anonymous::"anonymous"``;
* action ``Action::"<METHOD>"`` (upper case); resource ``App::"<application>"``;
* context: ``path`` (the canonical match key, lower case), ``ip`` (the client address, an ``ipaddr``,
  only when known: ``context has ip && context.ip.isInRange(ip("10.0.0.0/8"))``), ``acr`` (0 none,
  1 pwd, 2 mfa, 3 phr), ``auth_age`` (whole seconds since sign-in rounded up, only when known),
  ``weekday`` (0 = Monday) and ``minute`` (of the day) in the bundle's time zone, ``risk`` (0-100).

Annotations: ``@id("...")`` is the rule id decisions report; a ``forbid`` with ``@step_up("mfa")``
and/or ``@max_auth_age("300")`` is a step-up rule: when it is satisfied and the request's sign-in
falls short of what it names, the answer is ``step_up`` (if some permit is satisfied and no plain
forbid is).

Combining (as :mod:`policy.compile`): a satisfied plain forbid -> deny (every such id); no satisfied
permit -> default deny; a satisfied step-up forbid whose requirement is unmet -> step_up; otherwise
allow (every satisfied permit). A policy that fails to evaluate (an attribute read without ``has``)
counts as *satisfied* when it is a forbid (fail closed) and as not satisfied when it is a permit.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cedarpy

from policy.compile import falls_short, local_clock
from policy.model import ACR_NAMES, Decision, Effect, Reason, Request, StepUp, acr_rank, acr_urn
from policy.rules import App, Bundle, BundleError, Finding, Network, PathPattern, Rule, Window, parse_duration

__all__ = [
    "ANONYMOUS",
    "HTTP_METHODS",
    "CedarDecider",
    "CedarPolicy",
    "RawCedarApp",
    "app_cedar",
    "cedar_decider",
    "cedar_schema",
    "cedar_string",
    "check_cedar",
    "rule_to_cedar",
    "to_cedar",
]

ANONYMOUS = "anonymous"
# Actions the schema always declares; a raw policy naming another method adds it.
HTTP_METHODS = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTITY_TYPES = """\
entity Group, Department, Role;
entity User in [Group, Department, Role];
entity Anonymous;
entity App;
type Context = {
  path: String,
  ip?: ipaddr,
  acr: Long,
  auth_age?: Long,
  weekday: Long,
  minute: Long,
  risk: Long,
};
"""


def cedar_schema(actions: Iterable[str] = ()) -> str:
    """The Cedar schema (Cedar schema syntax) policies are validated against: the entity types and
    context above, and one action per HTTP method (:data:`HTTP_METHODS` and ``actions``)."""
    names = list(HTTP_METHODS) + sorted(set(actions) - set(HTTP_METHODS))
    listed = ", ".join(cedar_string(name) for name in names)
    return (
        _ENTITY_TYPES
        + f"action {listed}\n"
        + "  appliesTo { principal: [User, Anonymous], resource: [App], context: Context };\n"
    )


# -- writing Cedar ---------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _escape(text: str, star: bool = False) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif star and ch == "*":
            out.append("\\*")  # a literal "*" in a like pattern
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return "".join(out)


def cedar_string(text: str) -> str:
    """``text`` as a Cedar string literal: quotes, backslashes and control characters escaped, so a
    name can never end the literal early (``a"b`` -> ``"a\\"b"``)."""
    return f'"{_escape(text)}"'


def _like(key: str, glob: bool) -> str:
    """A ``like`` pattern literal: ``*`` is the wildcard in a glob, a plain character otherwise."""
    if not glob:
        return f'"{_escape(key, star=True)}"'
    return '"' + "*".join(_escape(part, star=True) for part in key.split("*")) + '"'


def _entity(kind: str, name: str) -> str:
    return f"{kind}::{cedar_string(name)}"


def _comment(text: str) -> str:
    """Text safe inside a ``//`` comment: one line, printable (a description cannot end the
    comment and start a policy)."""
    return "".join(ch for ch in " ".join(text.split()) if ch.isprintable())


def _ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as Cedar's ``ip()`` reads it: it refuses IPv4 embedded in IPv6 text
    (``::ffff:10.1.2.3``) and zone ids, so such addresses are written in full hex."""
    if address.version == 4:
        return str(address)
    plain = ipaddress.IPv6Address(int(address))
    text = str(plain)
    return plain.exploded if "." in text else text


def _cidr_text(cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return f"{_ip_text(cidr.network_address)}/{cidr.prefixlen}"


def _paths(patterns: tuple[PathPattern, ...]) -> str | None:
    """The condition "the path matches one of these" (None: every path matches)."""
    parts = []
    for p in patterns:
        if not p.glob and p.key == "":
            return None  # the root covers every path
        if p.glob:
            parts.append(f"context.path like {_like(p.key, True)}")
        else:
            below = '"' + _escape(p.key + "/", star=True) + '*"'
            parts.append(f"context.path == {cedar_string(p.key)} || context.path like {below}")
    if len(parts) == 1:
        return parts[0]
    return " || ".join(f"({part})" if "||" in part else part for part in parts)


def _subjects(
    users: Iterable[str], groups: Iterable[str], departments: Iterable[str], roles: Iterable[str]
) -> list[str]:
    return (
        [_entity("User", u) for u in sorted(users)]
        + [_entity("Group", g) for g in sorted(groups)]
        + [_entity("Department", d) for d in sorted(departments)]
        + [_entity("Role", r) for r in sorted(roles)]
    )


def _networks(networks: tuple[Network, ...]) -> str:
    checks = [f'context.ip.isInRange(ip("{_cidr_text(c)}"))' for n in networks for c in n.cidrs]
    if not checks:
        return "false"  # a zone with no CIDRs matches nothing
    inner = checks[0] if len(checks) == 1 else "(" + " || ".join(checks) + ")"
    return f"context has ip && {inner}"


def _days(days: frozenset[int]) -> str | None:
    if len(days) == 7:
        return None
    if len(days) == 1:
        return f"context.weekday == {next(iter(days))}"
    return f"[{', '.join(str(d) for d in sorted(days))}].contains(context.weekday)"


def _window(w: Window) -> str:
    if not w.overnight:
        parts = [_days(w.days), f"{w.start} <= context.minute", f"context.minute < {w.end}"]
        return " && ".join(p for p in parts if p)
    # Across midnight: from ``start`` on a listed day, until ``end`` on the day after one.
    first = " && ".join(p for p in (_days(w.days), f"context.minute >= {w.start}") if p)
    second = " && ".join(
        p for p in (_days(frozenset((d + 1) % 7 for d in w.days)), f"context.minute < {w.end}") if p
    )
    return f"({first}) || ({second})"


def _schedule(windows: tuple[Window, ...]) -> str:
    parts = [_window(w) for w in windows]
    if len(parts) == 1:
        return parts[0]
    return " || ".join(f"({part})" for part in parts)


def _requirement_unmet(rule: Rule) -> str:
    """For a step_up rule: the request's sign-in falls short of what the rule asks."""
    parts = []
    if rule.acr_rank:
        parts.append(f"context.acr < {rule.acr_rank}")
    if rule.max_auth_age is not None:
        parts.append(f"!(context has auth_age && context.auth_age <= {rule.max_auth_age})")
    return " || ".join(parts)


def rule_to_cedar(rule: Rule, timezone: str = "") -> str:
    """One rule as one Cedar policy (annotated, with a comment saying where it came from)."""
    lines = []
    where = f"{rule.source}:{rule.line}" if rule.source else (f"line {rule.line}" if rule.line else "")
    about = " - ".join(t for t in (_comment(rule.id), _comment(rule.description), where) if t)
    lines.append(f"// {about}")
    lines.append(f"@id({cedar_string(rule.id)})")
    if rule.effect is Effect.STEP_UP:
        if rule.acr:
            lines.append(f"@step_up({cedar_string(rule.acr)})")
        if rule.max_auth_age is not None:
            lines.append(f'@max_auth_age("{rule.max_auth_age}")')

    subjects = _subjects(rule.users, rule.groups, rule.departments, rule.roles)
    conditions: list[tuple[str, str, str]] = []  # (when | unless, expression, comment)
    if not subjects:
        principal = "principal" if rule.admits_anonymous else "principal is User"
    elif len(subjects) == 1:
        principal = ("principal == " if subjects[0].startswith("User::") else "principal in ") + subjects[0]
    else:
        principal = "principal is User"
        conditions.append(("when", f"principal in [{', '.join(subjects)}]", ""))
    if rule.methods is None:
        action = "action"
    elif len(rule.methods) == 1:
        action = f"action == {_entity('Action', next(iter(rule.methods)))}"
    else:
        action = f"action in [{', '.join(_entity('Action', m) for m in sorted(rule.methods))}]"
    if rule.apps is None:
        resource = "resource"
    elif len(rule.apps) == 1:
        resource = f"resource == {_entity('App', next(iter(rule.apps)))}"
    else:
        resource = "resource"
        apps = ", ".join(_entity("App", a) for a in sorted(rule.apps))
        conditions.append(("when", f"resource in [{apps}]", ""))

    paths = _paths(rule.paths) if rule.paths else None
    if paths:
        conditions.append(("when", paths, ""))
    if rule.not_paths:
        conditions.append(("unless", _paths(rule.not_paths) or "true", "not_paths"))
    exceptions = _subjects(rule.not_users, rule.not_groups, rule.not_departments, rule.not_roles)
    if exceptions:
        conditions.append(("unless", f"principal in [{', '.join(exceptions)}]", "not_subjects"))
    if rule.effect is not Effect.STEP_UP:
        if rule.acr_rank:
            conditions.append(("when", f"context.acr >= {rule.acr_rank}", f"acr {rule.acr}"))
        if rule.max_auth_age is not None:
            age = f"context has auth_age && context.auth_age <= {rule.max_auth_age}"
            conditions.append(("when", age, ""))
    if rule.networks:
        names = ", ".join(_comment(n.text) for n in rule.networks)
        conditions.append(("when", _networks(rule.networks), names))
    if rule.not_networks:
        names = ", ".join(_comment(n.text) for n in rule.not_networks)
        conditions.append(("unless", _networks(rule.not_networks), f"not_networks: {names}"))
    if rule.schedule:
        zone = f" ({_comment(timezone)})" if timezone else ""
        conditions.append(("when", _schedule(rule.schedule), "; ".join(map(str, rule.schedule)) + zone))
    if rule.min_risk is not None:
        conditions.append(("when", f"context.risk >= {rule.min_risk}", ""))
    if rule.max_risk is not None:
        conditions.append(("when", f"context.risk <= {rule.max_risk}", ""))
    if rule.effect is Effect.STEP_UP:
        conditions.append(("when", _requirement_unmet(rule), "step-up requirement not met"))

    effect = "permit" if rule.effect is Effect.ALLOW else "forbid"
    clauses = [f"{effect} ({principal}, {action}, {resource})"]
    clauses += [f"{kind} {{ {expression} }}" for kind, expression, _ in conditions]
    notes = [""] + [note for _, _, note in conditions]
    clauses[-1] += ";"
    lines += [f"{clause} // {note}" if note else clause for clause, note in zip(clauses, notes, strict=True)]
    return "\n".join(lines)


SCHEMA = cedar_schema()


def _raw_policies(text: str) -> list[dict[str, Any]]:
    """The policies of raw Cedar text as Cedar's JSON form (EST), in text order."""
    est = json.loads(cedarpy.policies_to_json_str(text))
    if est.get("templates"):
        raise ValueError("policy templates (?principal, ?resource) are not supported")
    static = est.get("staticPolicies", {})
    return [static[key] for key in sorted(static, key=lambda k: int(k.removeprefix("policy")))]


def _scoped_raw(app: App) -> list[str]:
    """The raw Cedar of an application, each policy limited to ``App::"<app>"`` and given an
    ``@id`` when it has none (``<app>:policy<N>``, N counting from 0 in the raw text)."""
    if not app.cedar:
        return []
    out = []
    for index, policy in enumerate(_raw_policies(app.cedar)):
        annotations = dict(policy.get("annotations") or {})
        if not annotations.get("id"):
            annotations["id"] = f"{app.name}:policy{index}"
        scoped = dict(policy, annotations=annotations)
        scoped["conditions"] = [
            *policy.get("conditions", []),
            {
                "kind": "when",
                "body": {
                    "==": {
                        "left": {"Var": "resource"},
                        "right": {"Value": {"__entity": {"type": "App", "id": app.name}}},
                    }
                },
            },
        ]
        single = {"staticPolicies": {"policy0": scoped}, "templates": {}, "templateLinks": []}
        text = cedarpy.policies_from_json_str(json.dumps(single))
        out.append(cedarpy.format_policies(text, 100, 2).strip())
    return out


def app_cedar(bundle: Bundle, app: str) -> str:
    """The Cedar that decides one application: the translation of every rule that applies to it
    (bundle order) and its raw Cedar - the same policies :func:`to_cedar` prints for it."""
    parts = [rule_to_cedar(rule, bundle.timezone) for rule in bundle.rules_for(app)]
    if app in bundle.apps:
        parts += _scoped_raw(bundle.apps[app])
    return "\n\n".join(parts) + ("\n" if parts else "")


def to_cedar(bundle: Bundle) -> str:
    """The whole bundle as Cedar policy text: one policy per YAML rule, then each application's raw
    Cedar limited to that application. Deciding this text with :class:`CedarPolicy` gives the
    decisions of the compiled evaluator."""
    out = [
        f"// OneGate policy bundle {bundle.digest[:12] or '(unsaved)'} as Cedar: one policy per rule.",
        '// principal: User::"name" (in Group::, Department::, Role::) or Anonymous::"anonymous";',
        '// action: Action::"METHOD"; resource: App::"application".',
        "// context: path, ip?, acr (0 none 1 pwd 2 mfa 3 phr), auth_age? (s), weekday (0 = Mon),",
        "//   minute, risk;",
        f"// weekday and minute are local time in {_comment(bundle.timezone)}.",
        "// forbid + @step_up / @max_auth_age: a step-up rule.",
        "// Combining: deny > default deny (no permit) > step-up > allow.",
    ]
    if bundle.global_rules:
        out += ["", "// == bundle-wide rules =="]
        out += ["\n" + rule_to_cedar(rule, bundle.timezone) for rule in bundle.global_rules]
    for app in bundle.apps.values():
        title = f" ({_comment(app.title)})" if app.title.strip() else ""
        out += ["", f"// == application {_comment(app.name)}{title} =="]
        out += ["\n" + rule_to_cedar(rule, bundle.timezone) for rule in app.rules]
        raw = _scoped_raw(app)
        if raw:
            out.append(f"\n// raw Cedar of {_comment(app.name)}, limited to App::{cedar_string(app.name)}")
            out += ["\n" + text for text in raw]
    return "\n".join(out) + "\n"


# -- deciding through cedarpy -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Policy:
    """What the combiner needs to know of one Cedar policy."""

    index: int
    rule_id: str
    effect: Effect  # ALLOW: permit; DENY: plain forbid; STEP_UP: forbid with @step_up / @max_auth_age
    acr_rank: int = 0
    max_age: int | None = None

    def unmet(self, r: Request) -> bool:
        return falls_short(r, self.acr_rank, self.max_age)


def _annotation_problems(policy: dict[str, Any]) -> list[str]:
    """What is wrong with the OneGate annotations of a policy (English, for findings)."""
    notes = policy.get("annotations") or {}
    problems = []
    step = notes.get("step_up")
    age = notes.get("max_auth_age")
    if (step is not None or age is not None) and policy.get("effect") != "forbid":
        problems.append("@step_up and @max_auth_age belong on forbid policies")
    if step is not None and not acr_rank(step):
        problems.append(f"@step_up({step!r}) must name one of {', '.join(ACR_NAMES)}")
    if age is not None:
        try:
            parse_duration(age)
        except ValueError:
            problems.append(f"@max_auth_age({age!r}) must be a duration (300, 90s, 15m, 8h, 1d)")
    return problems


def _describe(policies: list[dict[str, Any]]) -> list[_Policy]:
    out = []
    for index, policy in enumerate(policies):
        notes = policy.get("annotations") or {}
        rule_id = notes.get("id") or f"policy{index}"
        if policy["effect"] == "permit":
            out.append(_Policy(index, rule_id, Effect.ALLOW))
            continue
        step, age = notes.get("step_up"), notes.get("max_auth_age")
        if step is None and age is None:
            out.append(_Policy(index, rule_id, Effect.DENY))
            continue
        out.append(
            _Policy(
                index,
                rule_id,
                Effect.STEP_UP,
                acr_rank(step) if step else 0,
                parse_duration(age) if age is not None else None,
            )
        )
    return out


class _Principals:
    """The principal and entity set of a request, cached by (user, groups, departments, roles):
    parsing the user's entity is a good part of a call, and the same users come back."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._cache: dict[tuple[str, frozenset[str], tuple[str, ...], frozenset[str]], cedarpy.Entities] = {}
        self._none = cedarpy.Entities.from_json_str("[]")
        self._anonymous = {"type": "Anonymous", "id": ANONYMOUS}

    def of(self, r: Request) -> tuple[dict[str, str], cedarpy.Entities]:
        if r.user is None:
            return self._anonymous, self._none
        key = (r.user, r.groups, r.departments, r.roles)
        entities = self._cache.get(key)
        if entities is None:
            parents = (
                [{"type": "Group", "id": g} for g in sorted(r.groups)]
                + [{"type": "Department", "id": d} for d in dict.fromkeys(r.departments)]
                + [{"type": "Role", "id": role} for role in sorted(r.roles)]
            )
            user = {"uid": {"type": "User", "id": r.user}, "attrs": {}, "parents": parents}
            entities = cedarpy.Entities.from_json_str(json.dumps([user]))
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = entities
        return {"type": "User", "id": r.user}, entities


_CONTEXT = frozenset({"path", "ip", "acr", "auth_age", "weekday", "minute", "risk"})


def _context_reads(node: Any) -> frozenset[str]:
    """The context attributes policies (JSON form) read: ``context.x`` and ``context has x``; all
    of them if ``context`` is used any other way."""
    found: set[str] = set()

    def walk(node: Any) -> bool:  # False: context used as a whole
        if isinstance(node, dict):
            if node.get("Var") == "context":
                return False
            for op in (".", "has"):
                inner = node.get(op)
                if isinstance(inner, dict) and inner.get("left") == {"Var": "context"}:
                    found.add(str(inner.get("attr")))
                    return True
            return all(walk(value) for value in node.values())
        if isinstance(node, list):
            return all(walk(value) for value in node)
        return True

    return frozenset(found) if walk(node) else _CONTEXT


_ERRORED = re.compile(r"policy `([^`]+)`")
_MAX_AGE = 2**53  # auth_age is a Cedar Long; a sign-in further back than this is "very long ago"


class CedarPolicy:
    """Cedar policy text decided by cedarpy with OneGate's combining algorithm.

    ``apps``: the applications the text decides (others get ``unknown_app``); None: any. The text
    is parsed once (a :class:`cedarpy.PolicySet`); permits are also kept apart, for the one case
    where a step-up forbid hides whether a permit was satisfied.
    """

    def __init__(
        self,
        text: str,
        timezone: str,
        *,
        apps: Iterable[str] | None = None,
        principals: _Principals | None = None,
    ) -> None:
        self.text = text
        self.timezone = timezone
        self.apps = frozenset(apps) if apps is not None else None
        self._set = cedarpy.PolicySet.from_str(text)
        policies = _raw_policies(text) if text.strip() else []
        problems = [
            f"policy{i}: {p}" for i, policy in enumerate(policies) for p in _annotation_problems(policy)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        self.policies = _describe(policies)
        self._by_id = {f"policy{p.index}": p for p in self.policies}
        self._has_step_up = any(p.effect is Effect.STEP_UP for p in self.policies)
        self._permits: cedarpy.PolicySet | None = None
        if self._has_step_up:
            permits = {f"policy{i}": p for i, p in enumerate(policies) if p["effect"] == "permit"}
            self._permits = cedarpy.PolicySet.from_json_str(
                json.dumps({"staticPolicies": permits, "templates": {}, "templateLinks": []})
            )
        self._clock = local_clock(timezone)
        self._needs = _context_reads(policies)
        self._principals = principals or _Principals()
        self._unknown = Decision(Effect.DENY, Reason.UNKNOWN_APP)
        self._default = Decision(Effect.DENY, Reason.NO_MATCHING_RULE)

    def context(self, r: Request, full: bool = False) -> dict[str, Any]:
        """The Cedar context of a request (see the module docstring). Only the attributes the
        policies read are filled in (Cedar parses each one per call), unless ``full``."""
        needs = _CONTEXT if full else self._needs
        context: dict[str, Any] = {}
        if "path" in needs:
            context["path"] = r.path
        if "acr" in needs:
            context["acr"] = r.acr_rank
        if "weekday" in needs or "minute" in needs:
            context["weekday"], context["minute"] = self._clock(r.now)
        if "risk" in needs:
            context["risk"] = int(r.risk)
        if "ip" in needs and r.ip is not None:
            context["ip"] = {"__extn": {"fn": "ip", "arg": _ip_text(r.ip)}}
        if "auth_age" in needs:
            age = r.auth_age
            if age is not None:
                context["auth_age"] = min(math.ceil(age), _MAX_AGE)
        return context

    def _ask(self, policies: cedarpy.PolicySet, r: Request) -> tuple[bool, list[_Policy], list[_Policy]]:
        """(allowed, satisfied policies, policies that failed to evaluate)."""
        principal, entities = self._principals.of(r)
        request = {
            "principal": principal,
            "action": {"type": "Action", "id": r.method},
            "resource": {"type": "App", "id": r.app},
            "context": self.context(r),
        }
        result = cedarpy.is_authorized(request, policies, entities)
        diagnostics = result.diagnostics
        by_id = self._by_id
        satisfied = [by_id[pid] for pid in diagnostics.reasons]
        errored: list[_Policy] = []
        for error in diagnostics.errors:
            match = _ERRORED.search(error)
            policy = by_id.get(match.group(1)) if match else None
            if policy is None:
                # The request itself could not be built: nothing was evaluated. Refuse.
                raise ValueError(f"Cedar could not evaluate the request: {error}")
            errored.append(policy)
        return result.allowed, satisfied, errored

    def decide(self, r: Request) -> Decision:
        if self.apps is not None and r.app not in self.apps:
            return self._unknown
        try:
            allowed, satisfied, errored = self._ask(self._set, r)
        except ValueError:  # the request could not be put to Cedar (nothing evaluated): refuse
            return self._default
        # A forbid that failed to evaluate counts as satisfied (fail closed).
        forbids = [p for p in satisfied if p.effect is not Effect.ALLOW]
        forbids += [p for p in errored if p.effect is not Effect.ALLOW]
        denied = sorted((p for p in forbids if p.effect is Effect.DENY), key=lambda p: p.index)
        if denied:
            return Decision(Effect.DENY, Reason.DENIED_BY_RULE, tuple(p.rule_id for p in denied))
        if allowed:
            permits = satisfied
        elif not satisfied or self._permits is None:
            return self._default
        else:
            # Only step-up forbids were satisfied, and they hide the permits: ask for those alone.
            _, permits, _ = self._ask(self._permits, r)
        permits = [p for p in permits if p.effect is Effect.ALLOW]
        if not permits:
            return self._default
        unmet = sorted((p for p in forbids if p.unmet(r)), key=lambda p: p.index)
        if unmet:
            rank = max(p.acr_rank for p in unmet)
            ages = [p.max_age for p in unmet if p.max_age is not None]
            return Decision(
                Effect.STEP_UP,
                Reason.STEP_UP_REQUIRED,
                tuple(p.rule_id for p in unmet),
                StepUp(acr_urn(ACR_NAMES[rank - 1]) if rank else None, min(ages) if ages else None),
            )
        permits.sort(key=lambda p: p.index)
        return Decision(Effect.ALLOW, Reason.ALLOWED, tuple(p.rule_id for p in permits))


class CedarDecider:
    """A whole bundle decided through cedarpy: one policy set per application (:func:`app_cedar`),
    so a request is evaluated against the policies of its application only."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        principals = _Principals()
        self._apps = {
            name: CedarPolicy(app_cedar(bundle, name), bundle.timezone, principals=principals)
            for name in bundle.apps
        }
        self._unknown = Decision(Effect.DENY, Reason.UNKNOWN_APP)

    def decide(self, r: Request) -> Decision:
        policy = self._apps.get(r.app)
        if policy is None:
            return self._unknown
        return policy.decide(r)


def cedar_decider(bundle: Bundle) -> CedarDecider:
    """Every application of ``bundle`` decided through cedarpy (YAML rules translated, raw Cedar as
    written): the reference the compiled evaluator is compared with, and what the benchmark times."""
    return CedarDecider(bundle)


class RawCedarApp(CedarPolicy):
    """An application with raw Cedar (``cedar:`` in the bundle), decided through cedarpy.

    ``rules`` are the YAML rules that apply to it as well (default: its own; the engine passes
    ``bundle.rules_for(name)`` so bundle-wide rules hold here too); they come first, the raw
    policies after them. The text is checked at load: :class:`~policy.rules.BundleError` with the
    findings of :func:`check_cedar` if it has errors.
    """

    def __init__(self, app: App, timezone: str, rules: Iterable[Rule] | None = None) -> None:
        rules = tuple(app.rules if rules is None else rules)
        errors = [f for f in check_cedar(app, rules) if f.severity == "error"]
        if errors:
            raise BundleError(errors)
        parts = [rule_to_cedar(rule, timezone) for rule in rules] + _scoped_raw(app)
        super().__init__("\n\n".join(parts) + "\n", timezone, apps=(app.name,))
        self.app = app


# -- checking raw Cedar ------------------------------------------------------------------------


def _policy_lines(text: str) -> list[int]:
    """The line (1-based) each policy of well-formed Cedar text starts on (its first annotation),
    found by a scan that skips string literals and ``//`` comments."""
    starts: list[int] = []
    line, i, n = 1, 0, len(text)
    expecting = True  # at the top level, before a policy's first token
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == '"':
            if expecting:
                starts.append(line)
                expecting = False
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif ch == ";":
            expecting = True
        elif not ch.isspace() and expecting:
            starts.append(line)
            expecting = False
        i += 1
    return starts


def _parses(text: str) -> str | None:
    """None if ``text`` parses as Cedar policies, else Cedar's message."""
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as e:
        return str(e) or "cannot parse"
    return None


def _error_line(text: str) -> int:
    """The line of the first syntax error in ``text`` (1-based).

    Cedar's messages carry no position, so the text is cut after each line: a cut before the error
    fails only with "unexpected end of input" (it is the start of valid text), a cut after it fails
    with the error itself; a binary search finds the first such line. Errors found after parsing
    (a duplicate annotation, a bad escape) are reported at the start of their policy.
    """
    lines = text.splitlines(keepends=True)

    def broken(count: int) -> bool:
        message = _parses("".join(lines[:count]))
        return message is not None and "unexpected end of input" not in message

    if not lines:
        return 1
    if not broken(len(lines)):
        return max((i + 1 for i, ln in enumerate(lines) if ln.strip()), default=1)
    low, high = 1, len(lines)
    while low < high:
        middle = (low + high) // 2
        if broken(middle):
            high = middle
        else:
            low = middle + 1
    message = _parses("".join(lines[:low])) or ""
    if message.startswith(("unexpected token", "invalid token", "unrecognized")):
        return low
    # A policy that parses but is refused as a whole: back to where it starts.
    start = low - 1
    while start > 0 and _parses("".join(lines[:start])) is not None:
        start -= 1
    while start < low - 1 and not lines[start].strip():
        start += 1
    return start + 1


def _entities_of(node: Any, kind: str) -> set[str]:
    """Every entity id of type ``kind`` named anywhere in a policy's JSON form."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key in ("__entity", "entity"):
            value = node.get(key)
            if isinstance(value, dict) and value.get("type") == kind and isinstance(value.get("id"), str):
                found.add(value["id"])
        for value in node.values():
            found |= _entities_of(value, kind)
        entities = node.get("entities")
        if isinstance(entities, list):
            for value in entities:
                if isinstance(value, dict) and value.get("type") == kind:
                    found.add(value["id"])
    elif isinstance(node, list):
        for value in node:
            found |= _entities_of(value, kind)
    return found


_FOR_ACTION = re.compile(r" (?:for|in context for) Action::\"(?:[^\"\\]|\\.)*\"")


def check_cedar(app: App, rules: Iterable[Rule] = ()) -> list[Finding]:
    """What is wrong with an application's raw Cedar: text that does not parse (error, with its
    line), templates, bad ``@step_up`` / ``@max_auth_age`` annotations, duplicate ``@id`` values
    (also against ``rules`` and the application's YAML rules), and policies that do not validate
    against :data:`SCHEMA` (unknown attributes or entity types, an optional attribute read without
    ``has``, type errors); a warning for a policy naming another application.

    ``Finding.line`` is the line in the bundle file when the application knows where its Cedar
    text starts (``App.cedar_line``), else the application's line; the message gives the line
    within the Cedar text either way.
    """
    text = app.cedar or ""
    if not text.strip():
        return []
    base = app.cedar_line
    findings: list[Finding] = []

    def add(  # noqa: PLR0917 - one call per finding kind, read best positionally
        severity: str, code: str, cedar_line: int, en: str, zh: str, rule_id: str | None = None
    ) -> None:
        line = base + cedar_line - 1 if base else app.line
        findings.append(
            Finding(
                severity,
                code,
                f"application {app.name}, Cedar line {cedar_line}: {en}",
                f"应用 {app.name} 的 Cedar 第 {cedar_line} 行：{zh}",
                app.source,
                line,
                rule_id,
            )
        )

    message = _parses(text)
    if message is not None:
        add(
            "error",
            "cedar_syntax",
            _error_line(text),
            f"not valid Cedar: {message}",
            f"不是有效的 Cedar：{message}",
        )
        return findings
    try:
        policies = _raw_policies(text)
    except ValueError as e:
        add("error", "cedar_template", 1, str(e), "不支持策略模板（?principal、?resource）")
        return findings
    starts = _policy_lines(text)
    if len(starts) != len(policies):  # cannot happen for text Cedar parsed; never index past the end
        starts = [1] * len(policies)

    seen = {rule.id for rule in (*app.rules, *rules)}
    for index, policy in enumerate(policies):
        notes = policy.get("annotations") or {}
        rule_id = notes.get("id") or None
        for problem in _annotation_problems(policy):
            add("error", "cedar_annotation", starts[index], problem, f"注解有误：{problem}", rule_id)
        if rule_id is not None:
            if rule_id in seen:
                add(
                    "error",
                    "duplicate_id",
                    starts[index],
                    f"@id({rule_id!r}) is used by another rule of this application",
                    f"@id({rule_id!r}) 与该应用的其他规则重复",
                    rule_id,
                )
            seen.add(rule_id)
        others = sorted(_entities_of(policy, "App") - {app.name})
        if others:
            add(
                "warning",
                "cedar_other_app",
                starts[index],
                f"names application(s) {', '.join(others)}; this Cedar decides only {app.name}'s requests",
                f"引用了应用 {', '.join(others)}；此处的 Cedar 只决定应用 {app.name} 的请求",
                rule_id,
            )

    actions = {name for policy in policies for name in _entities_of(policy, "Action")}
    result = cedarpy.validate_policies(text, cedar_schema(actions))
    reported: set[tuple[str, str]] = set()
    for error in result.errors:
        pid = error.policy_id
        problem = _FOR_ACTION.sub("", error.error).removeprefix(f"for policy `{pid}`, ")
        if (pid, problem) in reported:
            continue
        reported.add((pid, problem))
        index = int(pid.removeprefix("policy")) if pid.startswith("policy") and pid[6:].isdigit() else -1
        line = starts[index] if 0 <= index < len(starts) else 1
        rule_id = (policies[index].get("annotations") or {}).get("id") if index >= 0 else None
        add(
            "error",
            "cedar_schema",
            line,
            f"does not validate against the OneGate schema: {problem}",
            f"不符合 OneGate 的 Cedar 模式（schema）：{problem}",
            rule_id or None,
        )
    return findings
