"""The in-process evaluator: a bundle compiled once into plain data, decided per request.

Nothing is parsed per request. Each application's rules are bucketed by the first path segment
they can match (``/admin/...`` -> ``admin``; a rule for every path sits in every bucket), so a
request looks at the few rules that could concern it, in bundle order. Within a rule the cheap
conditions come first; networks are integer ranges; group, department and role sets are
frozensets; the local time is computed only when a rule has a schedule, at most once per request.

The semantics are those of docs/policy.md; :mod:`policy.cedar` states the same in Cedar and the
property tests hold the two to the same answers.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from policy.model import ACR_NAMES, Decision, Effect, Reason, Request, StepUp, acr_urn
from policy.rules import Bundle, Network, Rule, glob_regex

__all__ = ["AppDecider", "CompiledPolicy", "compile_bundle", "falls_short", "local_clock"]


def falls_short(r: Request, acr_rank: int, max_age: int | None) -> bool:
    """Whether the request's sign-in is weaker than ``acr_rank`` or older than ``max_age``
    seconds (an unknown age is too old): what an unmet step-up requirement is."""
    if acr_rank and r.acr_rank < acr_rank:
        return True
    if max_age is not None:
        age = r.auth_age
        return age is None or age > max_age
    return False


class AppDecider(Protocol):
    """Decides the requests of one application some other way (raw Cedar)."""

    def decide(self, request: Request) -> Decision: ...


def local_clock(timezone: str) -> Callable[[float], tuple[int, int]]:
    """``now -> (weekday (0 = Monday), minute of the day)`` in ``timezone``."""
    zone = zoneinfo.ZoneInfo(timezone)

    def clock(now: float) -> tuple[int, int]:
        local = datetime.fromtimestamp(now, zone)
        return local.weekday(), local.hour * 60 + local.minute

    return clock


def _ranges(networks: tuple[Network, ...]) -> tuple[tuple[int, int, int], ...]:
    return tuple(
        (cidr.version, int(cidr.network_address), int(cidr.broadcast_address))
        for network in networks
        for cidr in network.cidrs
    )


class _Rule:
    """One rule as the evaluator holds it: None (or empty) means "no such condition"."""

    __slots__ = (
        "acr_rank",
        "anonymous",
        "departments",
        "effect",
        "exact",
        "globs",
        "groups",
        "has_subjects",
        "id",
        "max_age",
        "max_risk",
        "methods",
        "min_risk",
        "networks",
        "not_departments",
        "not_exact",
        "not_globs",
        "not_groups",
        "not_networks",
        "not_prefixes",
        "not_roles",
        "not_users",
        "prefixes",
        "roles",
        "schedule",
        "step_up",
        "users",
    )

    def __init__(self, rule: Rule) -> None:
        self.id = rule.id
        self.effect = rule.effect
        self.step_up = rule.effect is Effect.STEP_UP
        prefixes = [p.key for p in rule.paths if not p.glob]
        globs = [p for p in rule.paths if p.glob]
        has_paths = bool(rule.paths)
        # A prefix matches the path itself or anything below it ("/admin", "/admin/...").
        self.exact = frozenset(prefixes) if has_paths else None
        self.prefixes = tuple(key + "/" for key in prefixes)
        self.globs = tuple(glob_regex(p.key).fullmatch for p in globs)
        not_prefixes = [p.key for p in rule.not_paths if not p.glob]
        self.not_exact = frozenset(not_prefixes) if rule.not_paths else None
        self.not_prefixes = tuple(key + "/" for key in not_prefixes)
        self.not_globs = tuple(glob_regex(p.key).fullmatch for p in rule.not_paths if p.glob)
        # Exceptions (not_subjects): None when the rule has none.
        self.not_users = rule.not_users if rule.has_exceptions else None
        self.not_groups = rule.not_groups
        self.not_departments = rule.not_departments
        self.not_roles = rule.not_roles
        self.methods = rule.methods
        self.has_subjects = rule.has_subjects
        self.users = rule.users
        self.groups = rule.groups
        self.departments = rule.departments
        self.roles = rule.roles
        self.anonymous = rule.admits_anonymous
        self.acr_rank = rule.acr_rank
        self.max_age = rule.max_auth_age
        self.networks = _ranges(rule.networks) or None
        self.not_networks = _ranges(rule.not_networks) or None
        self.schedule = tuple((w.days, w.start, w.end, w.overnight) for w in rule.schedule) or None
        self.min_risk = rule.min_risk
        self.max_risk = rule.max_risk

    def unmet(self, r: Request) -> bool:
        """For a step_up rule: whether the request's sign-in falls short of what it asks."""
        return falls_short(r, self.acr_rank, self.max_age)


def _in(ranges: tuple[tuple[int, int, int], ...], version: int, value: int) -> bool:
    # A plain loop: any() over a generator costs more on the hot path.
    for v, low, high in ranges:  # noqa: SIM110
        if v == version and low <= value <= high:
            return True
    return False


def _in_schedule(
    schedule: tuple[tuple[frozenset[int], int, int, bool], ...], weekday: int, minute: int
) -> bool:
    for days, start, end, overnight in schedule:
        if not overnight:
            if weekday in days and start <= minute < end:
                return True
        elif minute >= start:
            if weekday in days:
                return True
        elif minute < end and (weekday - 1) % 7 in days:
            return True
    return False


class _App:
    __slots__ = ("buckets", "decider", "fallback")

    def __init__(self, rules: tuple[Rule, ...], decider: AppDecider | None) -> None:
        self.decider = decider
        compiled = [(_Rule(rule), _segments(rule)) for rule in rules]
        segments = {seg for _, segs in compiled if segs is not None for seg in segs}
        # Every bucket keeps bundle order, so rule ids come out in bundle order.
        self.buckets = {
            seg: tuple(c for c, segs in compiled if segs is None or seg in segs) for seg in segments
        }
        self.fallback = tuple(c for c, segs in compiled if segs is None)


def _segments(rule: Rule) -> frozenset[str] | None:
    """The first path segments (match-key form) a rule can match; None: any."""
    if not rule.paths:
        return None
    out = set()
    for pattern in rule.paths:
        key = pattern.key
        if not pattern.glob:
            if key == "":
                return None
            out.add(key[1:].partition("/")[0])
            continue
        first, slash, _ = key[1:].partition("/")
        if not slash or "*" in first:
            return None  # "/a*" or "/*/x": the first segment is not a literal
        out.add(first)
    return frozenset(out)


class CompiledPolicy:
    """A bundle ready to decide. Immutable: a new bundle is a new object (swapped atomically)."""

    def __init__(self, bundle: Bundle, deciders: Mapping[str, AppDecider] | None = None) -> None:
        self.bundle = bundle
        self._clock = local_clock(bundle.timezone)
        deciders = deciders or {}
        self._apps = {name: _App(bundle.rules_for(name), deciders.get(name)) for name in bundle.apps}
        self._decisions: dict[tuple[Effect, tuple[str, ...]], Decision] = {}
        self._unknown = Decision(Effect.DENY, Reason.UNKNOWN_APP)
        self._default = Decision(Effect.DENY, Reason.NO_MATCHING_RULE)

    def _decision(self, effect: Effect, reason: Reason, ids: tuple[str, ...]) -> Decision:
        key = (effect, ids)
        decision = self._decisions.get(key)
        if decision is None:
            decision = Decision(effect, reason, ids)
            if len(self._decisions) < 100_000:
                self._decisions[key] = decision
        return decision

    def decide(self, r: Request) -> Decision:
        app = self._apps.get(r.app)
        if app is None:
            return self._unknown
        if app.decider is not None:
            return app.decider.decide(r)
        path = r.path
        rules = app.buckets.get(path[1:].partition("/")[0], app.fallback)
        method, user, risk, ip = r.method, r.user, r.risk, r.ip
        ip_version = ip_value = 0
        if ip is not None:
            ip_version, ip_value = ip.version, int(ip)
        local: tuple[int, int] | None = None
        denied: list[str] = []
        allowed: list[str] = []
        stepped: list[_Rule] = []
        for rule in rules:
            if rule.methods is not None and method not in rule.methods:
                continue
            if rule.exact is not None and not (
                path in rule.exact or path.startswith(rule.prefixes) or any(g(path) for g in rule.globs)
            ):
                continue
            if rule.not_exact is not None and (
                path in rule.not_exact
                or path.startswith(rule.not_prefixes)
                or any(g(path) for g in rule.not_globs)
            ):
                continue
            if rule.has_subjects:
                if user is None or not (
                    user in rule.users
                    or not rule.groups.isdisjoint(r.groups)
                    or not rule.departments.isdisjoint(r.departments)
                    or not rule.roles.isdisjoint(r.roles)
                ):
                    continue
            elif user is None and not rule.anonymous:
                continue
            if (
                rule.not_users is not None
                and user is not None
                and (
                    user in rule.not_users
                    or not rule.not_groups.isdisjoint(r.groups)
                    or not rule.not_departments.isdisjoint(r.departments)
                    or not rule.not_roles.isdisjoint(r.roles)
                )
            ):
                continue
            if rule.min_risk is not None and risk < rule.min_risk:
                continue
            if rule.max_risk is not None and risk > rule.max_risk:
                continue
            if rule.networks is not None and (ip is None or not _in(rule.networks, ip_version, ip_value)):
                continue
            if (
                rule.not_networks is not None
                and ip is not None
                and _in(rule.not_networks, ip_version, ip_value)
            ):
                continue
            if rule.schedule is not None:
                if local is None:
                    local = self._clock(r.now)
                if not _in_schedule(rule.schedule, *local):
                    continue
            if rule.step_up:
                if rule.unmet(r):
                    stepped.append(rule)
                continue
            if rule.effect is Effect.DENY:
                denied.append(rule.id)
                continue
            # An allow rule's acr and max_auth_age are conditions like the others.
            if rule.acr_rank and r.acr_rank < rule.acr_rank:
                continue
            if rule.max_age is not None:
                age = r.auth_age
                if age is None or age > rule.max_age:
                    continue
            allowed.append(rule.id)
        if denied:
            return self._decision(Effect.DENY, Reason.DENIED_BY_RULE, tuple(denied))
        if not allowed:
            return self._default
        if stepped:
            return step_up_decision(stepped)
        return self._decision(Effect.ALLOW, Reason.ALLOWED, tuple(allowed))


def step_up_decision(rules: list[_Rule] | list[Rule]) -> Decision:
    """The step-up decision for the unmet step_up rules: the strongest level any of them asks for,
    and the shortest sign-in age."""
    rank = max(rule.acr_rank for rule in rules)
    ages = [
        age
        for age in (rule.max_age if isinstance(rule, _Rule) else rule.max_auth_age for rule in rules)
        if age is not None
    ]
    return Decision(
        Effect.STEP_UP,
        Reason.STEP_UP_REQUIRED,
        tuple(rule.id for rule in rules),
        StepUp(acr=acr_urn(ACR_NAMES[rank - 1]) if rank else None, max_age=min(ages) if ages else None),
    )


def compile_bundle(bundle: Bundle, deciders: Mapping[str, AppDecider] | None = None) -> CompiledPolicy:
    """Compile a loaded bundle. ``deciders`` decide the applications that carry raw Cedar."""
    return CompiledPolicy(bundle, deciders)
