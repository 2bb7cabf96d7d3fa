"""``check``: a bundle against the directory, the application list, and itself.

Errors (the bundle cannot become active): a user, group, department or role the directory does
not know (a typo would silently deny, or worse, silently allow nobody the admin meant); a rule
for an application the bundle does not declare; raw Cedar that does not parse.

Warnings (it can, but someone should look):

- ``shadowed``: an allow or step_up rule that can never take effect, because a deny rule of the
  same application matches every request it matches;
- ``redundant``: an allow rule whose every request another allow rule already admits;
- ``overlap``: an allow and a deny rule of one application that both match some requests (the
  deny wins there; bundle-wide deny rules overlap by design and are not reported);
- ``no_allow``: an application with no allow rule (every request to it is denied);
- ``not_configured``: a policy for an application the gateway does not serve.

The rule-against-rule analysis is conservative: it reports containment only when it can show it
condition by condition, and an overlap whenever it cannot rule one out.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from policy.model import Effect
from policy.rules import Bundle, BundleError, Finding, PathPattern, Rule, Window, load_bundle

__all__ = ["Catalog", "check", "check_text", "has_errors"]


@dataclass(frozen=True)
class Catalog:
    """What exists, for the names a bundle uses; a None field is not checked."""

    users: Collection[str] | None = None
    groups: Collection[str] | None = None
    departments: Collection[str] | None = None
    roles: Collection[str] | None = None
    apps: Collection[str] | None = None


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def check_text(
    text: str | list[tuple[str, str]], catalog: Catalog | None = None, source: str = "policy.yaml"
) -> tuple[Bundle | None, list[Finding]]:
    """Load and check: ``(bundle, findings)``, the bundle None when it does not even load."""
    try:
        bundle = load_bundle(text, source)
    except BundleError as e:
        return None, e.findings
    return bundle, check(bundle, catalog)


def check(bundle: Bundle, catalog: Catalog | None = None) -> list[Finding]:
    """Every finding about ``bundle``, errors first, then in file and line order."""
    catalog = catalog or Catalog()
    findings: list[Finding] = []
    findings += _names(bundle, catalog)
    findings += _cedar(bundle)
    for app in bundle.apps:
        findings += _analyse(app, bundle.rules_for(app))
    if catalog.apps is not None:
        for declared in bundle.apps.values():
            if declared.name not in catalog.apps:
                findings.append(
                    Finding(
                        "warning",
                        "not_configured",
                        f"application {declared.name!r} is not served by the gateway",
                        f"网关没有配置应用 {declared.name!r}",
                        declared.source,
                        declared.line,
                    )
                )
    unique = list(dict.fromkeys(findings))
    return sorted(unique, key=lambda f: (f.severity != "error", f.source, f.line))


_KINDS = {
    "users": ("user", "用户"),
    "groups": ("group", "用户组"),
    "departments": ("department", "部门"),
    "roles": ("role", "角色"),
}


def _names(bundle: Bundle, catalog: Catalog) -> list[Finding]:
    out: list[Finding] = []
    for rule in bundle.all_rules():
        for kind, (en, zh) in _KINDS.items():
            known = getattr(catalog, kind)
            if known is None:
                continue
            named = getattr(rule, kind) | getattr(rule, f"not_{kind}")
            for name in sorted(named - set(known)):
                out.append(
                    Finding(
                        "error",
                        f"unknown_{en}",
                        f"unknown {en} {name!r}",
                        f"未知的{zh} {name!r}",
                        rule.source,
                        rule.line,
                        rule.id,
                    )
                )
        for app in sorted((rule.apps or set()) - set(bundle.apps)):
            out.append(
                Finding(
                    "error",
                    "unknown_app",
                    f"unknown application {app!r} (declare it under 'apps')",
                    f"未知的应用 {app!r}（请在 apps 下声明）",
                    rule.source,
                    rule.line,
                    rule.id,
                )
            )
    return out


def _cedar(bundle: Bundle) -> list[Finding]:
    apps = [app for app in bundle.apps.values() if app.cedar]
    if not apps:
        return []
    from policy.cedar import check_cedar

    return [f for app in apps for f in check_cedar(app, bundle.rules_for(app.name))]


def _analyse(app: str, rules: tuple[Rule, ...]) -> list[Finding]:
    out: list[Finding] = []
    denies = [r for r in rules if r.effect is Effect.DENY]
    allows = [r for r in rules if r.effect is Effect.ALLOW]
    if not allows:
        owner = next((r for r in rules), None)
        out.append(
            Finding(
                "warning",
                "no_allow",
                f"application {app!r} has no allow rule: every request to it is denied",
                f"应用 {app!r} 没有 allow 规则：所有请求都会被拒绝",
                owner.source if owner else "",
                owner.line if owner else 0,
            )
        )
    for rule in rules:
        if rule.effect is Effect.DENY:
            continue
        shadow = next((d for d in denies if covers(d, rule)), None)
        if shadow is not None:
            out.append(
                Finding(
                    "warning",
                    "shadowed",
                    f"rule {rule.id} can never take effect in {app!r}: deny rule {shadow.id} "
                    f"(line {shadow.line}) matches every request it matches",
                    f"规则 {rule.id} 在应用 {app!r} 中永远不会生效：deny 规则 {shadow.id}"
                    f"（第 {shadow.line} 行）覆盖了它匹配的全部请求",
                    rule.source,
                    rule.line,
                    rule.id,
                )
            )
            continue
        if rule.effect is Effect.ALLOW:
            wider = next(
                (a for a in allows if a is not rule and covers(a, rule) and not covers(rule, a)), None
            )
            if wider is None:  # two identical rules: report the later one
                wider = next(
                    (a for a in allows[: allows.index(rule)] if covers(a, rule) and covers(rule, a)), None
                )
            if wider is not None:
                out.append(
                    Finding(
                        "warning",
                        "redundant",
                        f"rule {rule.id} admits nothing that allow rule {wider.id} (line {wider.line}) "
                        "does not already admit",
                        f"规则 {rule.id} 放行的请求都已被 allow 规则 {wider.id}（第 {wider.line} 行）放行",
                        rule.source,
                        rule.line,
                        rule.id,
                    )
                )
            # Bundle-wide deny rules (risk, blocked networks) overlap by design: not reported.
            for deny in denies:
                if deny.apps is not None and len(deny.apps) == 1 and may_intersect(deny, rule):
                    out.append(
                        Finding(
                            "warning",
                            "overlap",
                            f"allow rule {rule.id} and deny rule {deny.id} (line {deny.line}) both match "
                            "some requests; the deny wins there",
                            f"allow 规则 {rule.id} 与 deny 规则 {deny.id}（第 {deny.line} 行）"
                            "会同时匹配部分请求；这些请求将被拒绝",
                            rule.source,
                            rule.line,
                            rule.id,
                        )
                    )
    return out


# -- containment and intersection, condition by condition --------------------------------------


def _path_covers(outer: PathPattern, inner: PathPattern) -> bool:
    if outer.glob:
        return inner.glob and inner.key == outer.key
    if outer.key == "":
        return True
    literal = inner.key.split("*", 1)[0] if inner.glob else inner.key
    if inner.glob:
        return literal.startswith(outer.key + "/")
    return literal == outer.key or literal.startswith(outer.key + "/")


def _window_covers(outer: Window, inner: Window) -> bool:
    if outer == inner:
        return True
    if outer.overnight or inner.overnight:
        return False
    return inner.days <= outer.days and outer.start <= inner.start and inner.end <= outer.end


def _cidrs_cover(outer: tuple, inner: tuple) -> bool:  # type: ignore[type-arg]
    return all(
        any(i.version == o.version and i.subnet_of(o) for net in outer for o in net.cidrs)
        for net_i in inner
        for i in net_i.cidrs
    )


def covers(outer: Rule, inner: Rule) -> bool:
    """Whether ``outer`` matches every request ``inner`` matches (shown condition by condition)."""
    if outer.paths and (
        not inner.paths or not all(any(_path_covers(o, i) for o in outer.paths) for i in inner.paths)
    ):
        return False
    # What the outer rule leaves out, the inner one must leave out too.
    if outer.not_paths and not all(any(_path_covers(i, o) for i in inner.not_paths) for o in outer.not_paths):
        return False
    if not all(getattr(outer, f"not_{k}") <= getattr(inner, f"not_{k}") for k in _KINDS):
        return False
    if outer.methods is not None and (inner.methods is None or not inner.methods <= outer.methods):
        return False
    if outer.has_subjects:
        if not inner.has_subjects or not all(getattr(inner, k) <= getattr(outer, k) for k in _KINDS):
            return False
    elif inner.admits_anonymous and not outer.admits_anonymous:
        return False
    if outer.networks and (not inner.networks or not _cidrs_cover(outer.networks, inner.networks)):
        return False
    if outer.not_networks and (
        not inner.not_networks or not _cidrs_cover(inner.not_networks, outer.not_networks)
    ):
        return False
    if outer.schedule and (
        not inner.schedule
        or not all(any(_window_covers(o, i) for o in outer.schedule) for i in inner.schedule)
    ):
        return False
    if outer.min_risk is not None and (inner.min_risk is None or inner.min_risk < outer.min_risk):
        return False
    if outer.max_risk is not None and (inner.max_risk is None or inner.max_risk > outer.max_risk):
        return False
    if outer.effect is Effect.ALLOW:
        if outer.acr_rank > inner.acr_rank:
            return False
        if outer.max_auth_age is not None and (
            inner.max_auth_age is None or inner.max_auth_age > outer.max_auth_age
        ):
            return False
    return True


def _paths_meet(a: PathPattern, b: PathPattern) -> bool:
    if a.glob or b.glob:
        return True  # cannot rule it out cheaply
    return _path_covers(a, b) or _path_covers(b, a)


def may_intersect(a: Rule, b: Rule) -> bool:
    """Whether some request could match both rules (False only when shown impossible)."""
    if a.paths and b.paths and not any(_paths_meet(x, y) for x in a.paths for y in b.paths):
        return False
    if a.methods is not None and b.methods is not None and not a.methods & b.methods:
        return False
    only_users = all(not getattr(r, k) for r in (a, b) for k in ("groups", "departments", "roles"))
    if a.has_subjects and b.has_subjects and only_users and not a.users & b.users:
        return False
    if a.networks and b.networks:
        pairs = [(x, y) for n in a.networks for x in n.cidrs for m in b.networks for y in m.cidrs]
        if not any(x.version == y.version and x.overlaps(y) for x, y in pairs):
            return False
    low = max(a.min_risk or 0, b.min_risk or 0)
    high = min(100 if a.max_risk is None else a.max_risk, 100 if b.max_risk is None else b.max_risk)
    return low <= high
