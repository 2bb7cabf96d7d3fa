"""Policy decisions: what one ``decide()`` costs with a city-sized bundle, and cedarpy beside it.

A generated bundle (fixed seed) of ``rules`` rules over ``apps`` applications and ``groups``
groups, written as YAML the way admins write it: per application a few allow rules (groups,
departments, roles, some users; paths as prefixes and globs; methods; some on intranet zones or
office-hour schedules, some asking for ``mfa`` / ``phr`` or a recent sign-in), a deny or two
(admin paths from outside the intranet, exports at high risk) and step-up rules; plus bundle-wide
rules (risk ceilings, blocked networks, a night-time step-up). Requests come from a pool of users
with 1-4 groups and a department chain, mostly reading, mostly from the intranet, at random times
of a week.

Figures, single-threaded, each decision timed alone with ``perf_counter_ns`` after a warm-up:

* ``decisions_per_s``, ``p50_us``, ``p99_us`` — :meth:`policy.engine.PolicyEngine.decide` (the
  compiled evaluator) over ``iterations`` decisions cycling through the requests;
* ``cedar_p50_us``, ``cedar_p99_us`` — the same bundle and requests decided through cedarpy
  (:func:`policy.cedar.cedar_decider`: the translation, one policy set per application),
  ``cedar_iterations`` decisions; ``cedar_vs_compiled`` is the ratio of the medians;
* ``cedar_one_set_p50_us`` — cedarpy with the whole bundle as one policy set (``to_cedar``), a
  few hundred decisions: why the decider keeps one set per application;
* ``load_ms`` — YAML load + compile of the bundle (median of 3); ``cedar_load_ms`` — building
  the cedarpy decider (translation and parsing);
* ``agree`` — the share of the requests on which the compiled evaluator and cedarpy give the same
  decision (effect, reason, rule ids, step-up): must be 1.0;
* ``allow_share``, ``deny_share``, ``step_up_share`` — what the requests come to.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from policy.cedar import CedarPolicy, cedar_decider, to_cedar
from policy.engine import PolicyEngine
from policy.model import Decision, Effect, Request
from policy.normalize import canonical_path
from policy.rules import Bundle, load_bundle

SEED = 20261130
DEPARTMENTS = [f"dept-{i:02d}" for i in range(20)]
ROLES = ["clerk", "approver", "auditor", "operator", "admin"]
ZONES = {
    "gov-intranet": ["10.0.0.0/8", "fd00:6a::/32"],
    "branch-offices": ["172.16.0.0/12"],
    "ops-vpn": ["192.168.100.0/24", "fd00:6b::/48"],
}
SECTIONS = ["admin", "api", "reports", "export", "docs", "files", "approvals", "audit", "settings", "search"]


def _app_rules(
    rnd: random.Random, app: str, groups: list[str], users: list[str], count: int
) -> list[dict[str, Any]]:
    """``count`` rules for one application, in the order an admin would write them."""
    sections = rnd.sample(SECTIONS, 6)
    rules: list[dict[str, Any]] = []
    for n in range(count):
        kind = rnd.choices(["allow", "deny", "step_up"], weights=[65, 20, 15])[0]
        rule: dict[str, Any] = {"id": f"{app}-{n:02d}", "effect": kind}
        section = rnd.choice(sections)
        shape = rnd.random()
        if shape < 0.15 and kind == "allow":
            rule["paths"] = ["/"]
        elif shape < 0.75:
            rule["paths"] = [f"/{section}"] + ([f"/{rnd.choice(sections)}"] if rnd.random() < 0.3 else [])
        else:
            rule["paths"] = [rnd.choice([f"/{section}/*/edit", f"/api/*/{section}", f"/{section}/*.pdf"])]
        if kind == "allow":
            if rnd.random() < 0.5:
                rule["methods"] = rnd.choice(
                    [["GET", "HEAD"], ["GET", "HEAD", "POST"], ["POST", "PUT", "DELETE"]]
                )
            subjects: dict[str, list[str]] = {"groups": rnd.sample(groups, rnd.randint(1, 3))}
            if rnd.random() < 0.3:
                subjects["departments"] = rnd.sample(DEPARTMENTS, 1)
            if rnd.random() < 0.15:
                subjects["roles"] = rnd.sample(ROLES, 1)
            if rnd.random() < 0.1:
                subjects["users"] = rnd.sample(users, 2)
            rule["subjects"] = subjects
            if rnd.random() < 0.35:
                rule["networks"] = rnd.sample(list(ZONES), rnd.randint(1, 2))
            if rnd.random() < 0.15:
                rule["schedule"] = {"days": "mon-fri", "hours": rnd.choice(["08:00-20:00", "07:30-18:30"])}
            if rnd.random() < 0.1:
                rule["acr"] = rnd.choice(["mfa", "phr"])
            if rnd.random() < 0.2:
                rule["max_risk"] = rnd.choice([50, 60, 70])
        elif kind == "deny":
            if rnd.random() < 0.6:
                rule["not_networks"] = ["gov-intranet"]
            else:
                rule["min_risk"] = rnd.choice([60, 70, 80])
            if rnd.random() < 0.3:
                rule["methods"] = ["DELETE"]
        else:
            rule["acr"] = rnd.choice(["mfa", "mfa", "phr"])
            if rnd.random() < 0.3:
                rule["max_auth_age"] = rnd.choice(["15m", "1h"])
            if rnd.random() < 0.3:
                rule["methods"] = ["POST", "PUT", "DELETE"]
        rules.append(rule)
    return rules


def make_bundle(rules: int = 1000, apps: int = 100, groups: int = 50, seed: int = SEED) -> str:
    """The benchmark bundle as YAML text (deterministic for a seed)."""
    rnd = random.Random(seed)
    group_names = [f"group-{i:02d}" for i in range(groups)]
    users = [f"user{i:04d}" for i in range(200)]
    global_rules: list[dict[str, Any]] = [
        {"id": "risk-ceiling", "effect": "deny", "apps": "*", "min_risk": 90},
        {
            "id": "blocked-nets",
            "effect": "deny",
            "apps": "*",
            "networks": ["203.0.113.0/24", "2001:db8:bad::/48"],
        },
        {
            "id": "night-step-up",
            "effect": "step_up",
            "apps": "*",
            "acr": "mfa",
            "schedule": {"days": "everyday", "hours": "22:00-06:00"},
        },
        {"id": "risky-step-up", "effect": "step_up", "apps": "*", "min_risk": 60, "acr": "phr"},
    ]
    names = [f"app{i:03d}" for i in range(apps)]
    for i in range(6):
        global_rules.append(
            {
                "id": f"shared-{i}",
                "effect": "allow",
                "apps": rnd.sample(names, 8),
                "paths": ["/docs"],
                "methods": ["GET", "HEAD"],
                "subjects": {"groups": rnd.sample(group_names, 2)},
            }
        )
    per_app = (rules - len(global_rules)) // apps
    extra = rules - len(global_rules) - per_app * apps
    doc: dict[str, Any] = {
        "version": 1,
        "timezone": "Asia/Shanghai",
        "zones": ZONES,
        "apps": {},
        "rules": global_rules,
    }
    for i, name in enumerate(names):
        count = per_app + (1 if i < extra else 0)
        doc["apps"][name] = {
            "name": f"应用 {i}",
            "hosts": [f"{name}.city.example"],
            "rules": _app_rules(rnd, name, group_names, users, count),
        }
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def make_requests(bundle: Bundle, count: int, groups: int, seed: int = SEED) -> list[Request]:
    """Requests as the gateway would see them: known users, mostly reads from the intranet."""
    rnd = random.Random(seed + 1)
    group_names = [f"group-{i:02d}" for i in range(groups)]
    people: list[tuple[str, frozenset[str], tuple[str, ...], frozenset[str]]] = []
    for i in range(300):
        people.append(
            (
                f"user{i:04d}",
                frozenset(rnd.sample(group_names, rnd.randint(1, 4))),
                tuple(rnd.sample(DEPARTMENTS, rnd.randint(1, 3))),
                frozenset(rnd.sample(ROLES, 1)) if rnd.random() < 0.3 else frozenset(),
            )
        )
    apps = list(bundle.apps)
    week = 1_796_000_000.0
    out = []
    addresses = {
        "gov-intranet": ["10.12.3.4", "10.200.1.9", "fd00:6a::15"],
        "branch-offices": ["172.20.1.1"],
        "ops-vpn": ["192.168.100.7", "fd00:6b::3"],
    }
    for _ in range(count):
        app = rnd.choice(apps)
        # Most requests are people using what they are entitled to: aim at one of the app's allow
        # rules (its group, method, network); the rest are anything at all.
        candidates = bundle.rules_for(app)
        allows = [r for r in candidates if r.effect is Effect.ALLOW]
        aimed = bool(allows) and rnd.random() < 0.8
        rule = rnd.choice(allows if aimed else candidates)
        base = (
            rnd.choice(rule.paths).key.replace("*", rnd.choice(["x", "v1", "report.pdf"]))
            if rule.paths
            else ""
        )
        path = canonical_path((base or "/") + rnd.choice(["", "", "/1", "/list", "/a/b"])).key
        user, member_of, chain, roles = rnd.choice(people)
        if aimed and rule.groups:
            member_of = member_of | {rnd.choice(sorted(rule.groups))}
        if aimed and rule.departments and rnd.random() < 0.5:
            chain = (rnd.choice(sorted(rule.departments)), *chain)
        ip = rnd.choices(
            [
                "10.12.3.4",
                "10.200.1.9",
                "fd00:6a::15",
                "172.20.1.1",
                "192.168.100.7",
                "8.8.8.8",
                "203.0.113.5",
            ],
            weights=[40, 20, 10, 10, 5, 10, 5],
        )[0]
        if aimed and rule.networks and rnd.random() < 0.9:
            ip = rnd.choice(addresses.get(rnd.choice(rule.networks).text, [ip]))
        method = rnd.choices(["GET", "POST", "PUT", "DELETE", "HEAD"], weights=[70, 15, 5, 5, 5])[0]
        if aimed and rule.methods and method not in rule.methods:
            method = rnd.choice(sorted(rule.methods))
        now = week + rnd.randrange(7 * 86400)
        out.append(
            Request(
                app=app,
                path=path,
                method=method,
                user=user if rnd.random() > 0.03 else None,
                groups=member_of,
                departments=chain,
                roles=roles,
                acr=rnd.choices(
                    ["urn:onegate:acr:pwd", "urn:onegate:acr:mfa", "urn:onegate:acr:phr"], [40, 45, 15]
                )[0],
                auth_time=now - rnd.choice([30, 600, 1800, 7200]),
                ip=ipaddress.ip_address(ip),
                now=now,
                risk=rnd.choices([5, 20, 40, 65, 95], weights=[50, 25, 15, 8, 2])[0],
            )
        )
    return out


def _timings(decide: Callable[[Request], Decision], requests: list[Request], iterations: int) -> list[int]:
    for request in requests[: min(len(requests), 2000)]:  # warm-up: caches, branch predictors
        decide(request)
    clock = time.perf_counter_ns
    times = []
    n = len(requests)
    for i in range(iterations):
        request = requests[i % n]
        start = clock()
        decide(request)
        times.append(clock() - start)
    return times


def _percentile(times: list[int], share: float) -> float:
    ordered = sorted(times)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1000, 2)


def run(  # noqa: PLR0917 - every size is a knob with a default
    rules: int = 1000,
    apps: int = 100,
    groups: int = 50,
    requests: int = 5000,
    iterations: int = 300_000,
    cedar_iterations: int = 30_000,
    one_set_iterations: int = 200,
) -> dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    text = make_bundle(rules, apps, groups)
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        engine = PolicyEngine(load_bundle(text, "bench.yaml"))
        loads.append((time.perf_counter() - start) * 1000)
    bundle = engine.bundle
    start = time.perf_counter()
    cedar = cedar_decider(bundle)
    cedar_load_ms = (time.perf_counter() - start) * 1000
    pool = make_requests(bundle, requests, groups)

    decisions = [engine.decide(r) for r in pool]
    agree = sum(decision == cedar.decide(r) for decision, r in zip(decisions, pool, strict=True)) / len(pool)

    compiled = _timings(engine.decide, pool, iterations)
    through_cedar = _timings(cedar.decide, pool, cedar_iterations)
    one_set = CedarPolicy(to_cedar(bundle), bundle.timezone, apps=bundle.apps)
    whole = _timings(one_set.decide, pool[:one_set_iterations], one_set_iterations)

    p50 = _percentile(compiled, 0.5)
    cedar_p50 = _percentile(through_cedar, 0.5)
    effects = [d.effect for d in decisions]
    return {
        "rules": len(bundle.all_rules()),
        "apps": len(bundle.apps),
        "groups": groups,
        "requests": len(pool),
        "decisions_per_s": round(len(compiled) / (sum(compiled) / 1e9)),
        "p50_us": p50,
        "p99_us": _percentile(compiled, 0.99),
        "cedar_p50_us": cedar_p50,
        "cedar_p99_us": _percentile(through_cedar, 0.99),
        "cedar_vs_compiled": round(cedar_p50 / p50, 1) if p50 else None,
        "cedar_one_set_p50_us": _percentile(whole, 0.5),
        "load_ms": round(statistics.median(loads), 1),
        "cedar_load_ms": round(cedar_load_ms, 1),
        "agree": agree,
        "allow_share": round(effects.count(Effect.ALLOW) / len(effects), 3),
        "deny_share": round(effects.count(Effect.DENY) / len(effects), 3),
        "step_up_share": round(effects.count(Effect.STEP_UP) / len(effects), 3),
        "iterations": iterations,
        "cedar_iterations": cedar_iterations,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
