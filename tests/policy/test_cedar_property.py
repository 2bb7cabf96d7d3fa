"""Property: for random small bundles and random requests, four deciders give the same decision
(effect, reason, rule ids in bundle order, step-up obligation):

* ``reference_decide`` below - the semantics of docs/policy.md written out plainly, rule by rule;
* the compiled evaluator (``policy.compile``) and the engine's own reference (``explain``);
* cedarpy on the translation, one policy set per application (``cedar_decider``);
* cedarpy on the whole translated text, as ``onegate policy compile --cedar`` prints it.

Names, paths and rule ids include quotes, backslashes and Chinese now and then, so the escaping of
the translation is under test too.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.cedar import CedarPolicy, cedar_decider, to_cedar
from policy.compile import compile_bundle
from policy.engine import reference_decide as engine_reference
from policy.model import ACR_NAMES, Decision, Effect, Reason, Request, StepUp, acr_rank, acr_urn
from policy.rules import App, Bundle, Network, PathPattern, Rule, Window

# -- the reference: the brief's semantics, rule by rule, nothing clever --------------------------


def _path_matches(pattern: PathPattern, path: str) -> bool:
    if not pattern.glob:
        if pattern.key == "":
            return True  # the root
        return path == pattern.key or path.startswith(pattern.key + "/")
    # "*" is any run of characters, "/" included; everything else is literal; the whole path.
    parts = pattern.key.split("*")
    if len(parts) == 1:
        return path == pattern.key
    if not path.startswith(parts[0]) or len(path) < len(parts[0]) + len(parts[-1]):
        return False
    if not path.endswith(parts[-1]):
        return False
    position, end = len(parts[0]), len(path) - len(parts[-1])
    for middle in parts[1:-1]:
        found = path.find(middle, position, end)
        if found < 0:
            return False
        position = found + len(middle)
    return True


def _in_networks(networks: tuple[Network, ...], ip: Any) -> bool:
    return ip is not None and any(
        ip.version == cidr.version and ip in cidr for network in networks for cidr in network.cidrs
    )


def _in_window(w: Window, weekday: int, minute: int) -> bool:
    if w.end > w.start:
        return weekday in w.days and w.start <= minute < w.end
    return (weekday in w.days and minute >= w.start) or ((weekday - 1) % 7 in w.days and minute < w.end)


def _matches(rule: Rule, r: Request, timezone: str) -> bool:
    if rule.apps is not None and r.app not in rule.apps:
        return False
    if rule.paths and not any(_path_matches(p, r.path) for p in rule.paths):
        return False
    if rule.not_paths and any(_path_matches(p, r.path) for p in rule.not_paths):
        return False
    if rule.methods is not None and r.method not in rule.methods:
        return False
    named = rule.users or rule.groups or rule.departments or rule.roles
    if named:
        if r.user is None:
            return False
        if not (
            r.user in rule.users
            or rule.groups & r.groups
            or rule.departments & set(r.departments)
            or rule.roles & r.roles
        ):
            return False
    elif r.user is None and rule.effect is Effect.ALLOW and not rule.anonymous:
        return False
    if r.user is not None and (
        r.user in rule.not_users
        or rule.not_groups & r.groups
        or rule.not_departments & set(r.departments)
        or rule.not_roles & r.roles
    ):
        return False
    if rule.effect is Effect.ALLOW:
        if rule.acr and acr_rank(r.acr) < acr_rank(rule.acr):
            return False
        if rule.max_auth_age is not None and (r.auth_age is None or r.auth_age > rule.max_auth_age):
            return False
    if rule.networks and not _in_networks(rule.networks, r.ip):
        return False
    if rule.not_networks and _in_networks(rule.not_networks, r.ip):
        return False
    if rule.schedule:
        local = datetime.fromtimestamp(r.now, ZoneInfo(timezone))
        if not any(_in_window(w, local.weekday(), local.hour * 60 + local.minute) for w in rule.schedule):
            return False
    if rule.min_risk is not None and r.risk < rule.min_risk:
        return False
    return not (rule.max_risk is not None and r.risk > rule.max_risk)


def _unmet(rule: Rule, r: Request) -> bool:
    if rule.acr and acr_rank(r.acr) < acr_rank(rule.acr):
        return True
    return rule.max_auth_age is not None and (r.auth_age is None or r.auth_age > rule.max_auth_age)


def reference_decide(bundle: Bundle, r: Request) -> Decision:
    if r.app not in bundle.apps:
        return Decision(Effect.DENY, Reason.UNKNOWN_APP)
    matching = [rule for rule in bundle.rules_for(r.app) if _matches(rule, r, bundle.timezone)]
    denied = tuple(rule.id for rule in matching if rule.effect is Effect.DENY)
    if denied:
        return Decision(Effect.DENY, Reason.DENIED_BY_RULE, denied)
    allowed = tuple(rule.id for rule in matching if rule.effect is Effect.ALLOW)
    if not allowed:
        return Decision(Effect.DENY, Reason.NO_MATCHING_RULE)
    stepped = [rule for rule in matching if rule.effect is Effect.STEP_UP and _unmet(rule, r)]
    if stepped:
        rank = max(acr_rank(rule.acr) for rule in stepped)
        ages = [rule.max_auth_age for rule in stepped if rule.max_auth_age is not None]
        return Decision(
            Effect.STEP_UP,
            Reason.STEP_UP_REQUIRED,
            tuple(rule.id for rule in stepped),
            StepUp(acr_urn(ACR_NAMES[rank - 1]) if rank else None, min(ages) if ages else None),
        )
    return Decision(Effect.ALLOW, Reason.ALLOWED, allowed)


# -- strategies ------------------------------------------------------------------------------

APPS = ["hr", "ops", 'we"b']
USERS = ["amy", "bo", 'q"u', "张伟"]
GROUPS = ["staff", "ops", "a\\b", "人事处"]
DEPARTMENTS = ["hr", "it", 'd"x']
ROLES = ["clerk", "admin"]
METHODS = ["GET", "POST", "DELETE"]
PREFIXES = ["", "/a", "/a/b", "/b", '/q"x', "/人"]
GLOBS = ["/a*", "/*/b", "/a/*", "*", "/*.pdf", '/q"*', "/a\\*"]
PATHS = ["/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/b", "/x/b", '/q"x', '/q"xy', "/人/x", "/f.pdf", "/a\\b"]
NETWORKS = [
    Network("10.0.0.0/8", (ipaddress.ip_network("10.0.0.0/8"),)),
    Network("10.1.0.0/16", (ipaddress.ip_network("10.1.0.0/16"),)),
    Network("192.168.1.0/24", (ipaddress.ip_network("192.168.1.0/24"),)),
    Network("2001:db8::/32", (ipaddress.ip_network("2001:db8::/32"),)),
    Network('zone "x"', (ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("192.168.0.0/16"))),
]
ADDRESSES = ["10.1.2.3", "10.2.0.1", "192.168.1.7", "192.168.9.9", "8.8.8.8", "fd00::1", "2001:db8::5", "::1"]
ZONES = ["Asia/Shanghai", "UTC", "America/New_York", "Asia/Kolkata"]
WEEK = datetime(2026, 11, 30, tzinfo=ZoneInfo("UTC")).timestamp()  # a Monday


def _subset(pool: list[str], most: int = 2) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(pool), max_size=most)


_pattern = st.one_of(
    st.sampled_from(PREFIXES).map(lambda k: PathPattern(k or "/", k, False)),
    st.sampled_from(GLOBS).map(lambda k: PathPattern(k, k, True)),
)
_window = st.builds(
    Window,
    days=st.frozensets(st.integers(0, 6), min_size=1, max_size=3),
    start=st.integers(0, 47).map(lambda h: h * 30),
    end=st.integers(1, 48).map(lambda h: h * 30),
)


@st.composite
def rules(draw: st.DrawFn, index: int, apps: list[str]) -> Rule:
    effect = draw(st.sampled_from([Effect.ALLOW, Effect.ALLOW, Effect.ALLOW, Effect.STEP_UP, Effect.DENY]))
    # Each condition is present now and then: rules with many conditions rarely match anything.
    some = st.integers(0, 3).map(lambda n: n == 0)
    rare = st.integers(0, 5).map(lambda n: n == 0)
    rule_id = draw(st.sampled_from([f"r{index}", f'r{index}"x', f"规则{index}", f"r{index}\\"]))
    kind = draw(st.sampled_from(["none", "users", "groups", "departments", "roles", "mixed"]))
    users = draw(_subset(USERS)) if kind in ("users", "mixed") else frozenset()
    groups = draw(_subset(GROUPS)) if kind in ("groups", "mixed") else frozenset()
    departments = draw(_subset(DEPARTMENTS, 1)) if kind in ("departments", "mixed") else frozenset()
    roles = draw(_subset(ROLES, 1)) if kind == "roles" else frozenset()
    named = bool(users or groups or departments or roles)
    acr = draw(st.sampled_from([None, None, *ACR_NAMES])) if effect is not Effect.DENY else None
    max_age = draw(st.sampled_from([None, None, 0, 60, 300])) if effect is not Effect.DENY else None
    if effect is Effect.STEP_UP and acr is None and max_age is None:
        acr = draw(st.sampled_from(ACR_NAMES))
    return Rule(
        id=rule_id,
        effect=effect,
        apps=draw(st.frozensets(st.sampled_from([*apps, "other"]), min_size=1)) if draw(some) else None,
        paths=tuple(draw(st.lists(_pattern, min_size=1, max_size=2))) if draw(st.booleans()) else (),
        not_paths=tuple(draw(st.lists(_pattern, max_size=1))) if draw(rare) else (),
        methods=draw(st.frozensets(st.sampled_from(METHODS), min_size=1)) if draw(some) else None,
        users=users,
        groups=groups,
        departments=departments,
        roles=roles,
        not_users=draw(_subset(USERS, 1)) if draw(rare) else frozenset(),
        not_groups=draw(_subset(GROUPS, 1)) if draw(rare) else frozenset(),
        not_departments=draw(_subset(DEPARTMENTS, 1)) if draw(rare) else frozenset(),
        not_roles=draw(_subset(ROLES, 1)) if draw(rare) else frozenset(),
        anonymous=effect is Effect.ALLOW and not named and draw(st.booleans()),
        acr=acr,
        max_auth_age=max_age,
        networks=tuple(draw(st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=2)))
        if draw(some)
        else (),
        not_networks=tuple(draw(st.lists(st.sampled_from(NETWORKS), min_size=1))) if draw(rare) else (),
        schedule=tuple(draw(st.lists(_window, min_size=1, max_size=2))) if draw(rare) else (),
        min_risk=draw(st.sampled_from([30, 50, 80])) if draw(rare) else None,
        max_risk=draw(st.sampled_from([30, 50, 100])) if draw(rare) else None,
    )


@st.composite
def bundles(draw: st.DrawFn) -> Bundle:
    names = draw(st.lists(st.sampled_from(APPS), min_size=1, max_size=3, unique=True))
    count = draw(st.integers(1, 8))
    made = []
    for index in range(count):
        rule = draw(rules(index, names))
        # Ids are unique in a bundle: the index is part of every one.
        made.append(rule)
    owners = [draw(st.sampled_from([None, *names])) for _ in made]
    apps = {}
    for name in names:
        own = tuple(
            Rule(**{**_fields(rule), "apps": frozenset({name})})
            for rule, owner in zip(made, owners, strict=True)
            if owner == name
        )
        apps[name] = App(name, title=f"title of {name}\n}} //", rules=own)
    global_rules = tuple(rule for rule, owner in zip(made, owners, strict=True) if owner is None)
    return Bundle(apps=apps, global_rules=global_rules, timezone=draw(st.sampled_from(ZONES)))


def _fields(rule: Rule) -> dict[str, Any]:
    return {name: getattr(rule, name) for name in Rule.__dataclass_fields__}


def _acr_fits(rule: Rule, acr: str | None) -> bool:
    if rule.effect is Effect.STEP_UP:
        return not rule.acr_rank or acr_rank(acr) <= rule.acr_rank  # unmet, or just met
    return acr_rank(acr) >= rule.acr_rank


@st.composite
def requests(draw: st.DrawFn, bundle: Bundle) -> Request:
    """A random request; most of them aimed at one or two rules of their application (most of
    their conditions made to hold), or hardly any request would match anything."""
    apps = list(bundle.apps)
    app = draw(st.sampled_from([*apps, *apps, *apps, "other"]))
    candidates = bundle.rules_for(app) if app in bundle.apps else ()
    targets: list[Rule] = []
    allows = [r for r in candidates if r.effect is Effect.ALLOW]
    steps = [r for r in candidates if r.effect is Effect.STEP_UP]
    if allows and steps and draw(st.booleans()):  # an allow and a step-up rule: step-up decisions
        targets = [draw(st.sampled_from(allows)), draw(st.sampled_from(steps))]
    elif candidates and draw(st.integers(0, 3)):
        targets = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=2, unique_by=id))
    aim = st.integers(0, 9).map(lambda n: bool(targets) and n > 0)

    def pick(pool: list[Any], fit: Any) -> Any:
        """A value of ``pool``: if aiming, one that fits every target, else the first one."""
        if draw(aim):
            for wanted in (targets, targets[:1]):
                suitable = [value for value in pool if all(fit(t, value) for t in wanted)]
                if suitable:
                    return draw(st.sampled_from(suitable))
        return draw(st.sampled_from(pool))

    week_minute = draw(st.integers(0, 7 * 24 * 60 - 1))
    timed = [t for t in targets if t.schedule]
    if timed and draw(aim):
        window = draw(st.sampled_from(timed[0].schedule))
        day = draw(st.sampled_from(sorted(window.days)))
        length = (window.end - window.start) % 1440 or 1440
        local = day * 1440 + window.start + draw(st.integers(0, length - 1))
        offset = datetime.fromtimestamp(WEEK, ZoneInfo(bundle.timezone)).utcoffset()
        week_minute = (local - (int(offset.total_seconds()) // 60 if offset else 0)) % (7 * 1440)
    now = WEEK + week_minute * 60 + draw(st.sampled_from([0, 59]))
    user = pick([None, *USERS, *USERS], lambda t, u: u is not None and (not t.users or u in t.users))
    groups = set(draw(_subset(GROUPS, 2)))
    departments = list(draw(st.lists(st.sampled_from(DEPARTMENTS), max_size=1)))
    roles = set(draw(_subset(ROLES, 1)))
    for t in targets:
        if draw(aim):
            if t.groups:
                groups.add(draw(st.sampled_from(sorted(t.groups))))
            if t.departments and not set(departments) & t.departments:
                departments.append(draw(st.sampled_from(sorted(t.departments))))
            if t.roles:
                roles.add(draw(st.sampled_from(sorted(t.roles))))
    ip = pick(
        [None, *ADDRESSES],
        lambda t, a: not t.networks or (a is not None and _in_networks(t.networks, ipaddress.ip_address(a))),
    )
    path = pick(PATHS, lambda t, p: not t.paths or any(_path_matches(x, p) for x in t.paths))
    method = pick([*METHODS, "PUT"], lambda t, m: t.methods is None or m in t.methods)
    risk = pick(
        [0, 29, 30, 31, 50, 79, 80, 99, 100],
        lambda t, n: (t.min_risk or 0) <= n <= (100 if t.max_risk is None else t.max_risk),
    )
    # An allow rule's sign-in conditions made to hold; a step-up rule's requirement unmet or just met.
    age = pick(
        [None, 0, 59.5, 60, 60.5, 299, 300, 300.2, 301, 5000],
        lambda t, a: (
            t.max_auth_age is None
            or (
                (a is None or a >= t.max_auth_age)
                if t.effect is Effect.STEP_UP
                else (a is not None and a <= t.max_auth_age)
            )
        ),
    )
    acr = pick([None, "pwd", "mfa", "phr", "urn:onegate:acr:mfa", "bogus"], _acr_fits)
    return Request(
        app=app,
        path=path,
        method=method,
        user=user,
        groups=frozenset(groups) if user else frozenset(),
        departments=tuple(departments) if user else (),
        roles=frozenset(roles) if user else frozenset(),
        acr=acr,
        auth_time=None if age is None else now - age,
        ip=ipaddress.ip_address(ip) if ip else None,
        now=now,
        risk=risk,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_reference_and_cedar_agree(data: st.DataObject) -> None:
    bundle = data.draw(bundles())
    compiled = compile_bundle(bundle)
    per_app = cedar_decider(bundle)
    whole = CedarPolicy(to_cedar(bundle), bundle.timezone, apps=bundle.apps)
    for request in data.draw(st.lists(requests(bundle), min_size=1, max_size=12)):
        expected = reference_decide(bundle, request)
        assert compiled.decide(request) == expected, request
        assert engine_reference(bundle, request)[0] == expected, request
        assert per_app.decide(request) == expected, request
        assert whole.decide(request) == expected, request


def test_the_reference_itself_on_fixed_cases() -> None:
    """The reference is only worth comparing against if it is right: a few hand-checked cases."""
    staff = Rule(id="s", effect=Effect.ALLOW, apps=None, groups=frozenset({"staff"}))
    deny = Rule(id="d", effect=Effect.DENY, apps=None, paths=(PathPattern("/a", "/a", False),))
    step = Rule(
        id="u", effect=Effect.STEP_UP, apps=None, paths=(PathPattern("/*/b", "/*/b", True),), acr="mfa"
    )
    bundle = Bundle(apps={"hr": App("hr")}, global_rules=(staff, deny, step))
    ask = {"app": "hr", "user": "u", "groups": frozenset({"staff"}), "now": WEEK}
    assert reference_decide(bundle, Request(path="/x", **ask)).rule_ids == ("s",)  # type: ignore[arg-type]
    assert reference_decide(bundle, Request(path="/a/x", **ask)).rule_ids == ("d",)  # type: ignore[arg-type]
    assert reference_decide(bundle, Request(path="/ab", **ask)).allowed  # type: ignore[arg-type]
    stepped = reference_decide(bundle, Request(path="/x/y/b", acr="pwd", **ask))  # type: ignore[arg-type]
    assert stepped.step_up == StepUp("urn:onegate:acr:mfa", None)
    assert reference_decide(bundle, Request(path="/x/b", acr="phr", **ask)).allowed  # type: ignore[arg-type]
    assert reference_decide(bundle, Request(app="x", path="/", now=WEEK)).reason is Reason.UNKNOWN_APP
    glob = PathPattern("/a*b*c", "/a*b*c", True)
    assert [_path_matches(glob, p) for p in ("/abc", "/a/b/c", "/abcx", "/ab", "/acb")] == [
        True,
        True,
        False,
        False,
        False,
    ]
