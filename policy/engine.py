"""The policy engine the gateway holds: ``decide`` per request, ``explain`` for people.

:class:`PolicyEngine` wraps one loaded bundle: the compiled evaluator for the YAML rules, and a
Cedar decider for each application that carries raw Cedar. ``decide`` is the hot path;
``explain`` evaluates every rule of the application one condition at a time (slowly, plainly) and
says in Chinese and English which rules matched, which did not and why - for the admin console,
``onegate policy explain`` and the deny page's request id lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policy.compile import AppDecider, CompiledPolicy, compile_bundle, local_clock, step_up_decision
from policy.model import Decision, Effect, Reason, Request
from policy.rules import Bundle, Rule, load_bundle

if TYPE_CHECKING:
    from policy.rules import Network

__all__ = ["CONDITIONS", "Explanation", "PolicyEngine", "RuleTrace", "reference_decide"]

# Every condition a rule may have, in the order explain reports them, with its Chinese label.
CONDITIONS: dict[str, str] = {
    "paths": "路径",
    "not_paths": "排除路径",
    "methods": "请求方法",
    "subjects": "用户/用户组/部门/角色",
    "anonymous": "须登录",
    "not_subjects": "排除的用户/用户组/部门/角色",
    "min_risk": "风险下限",
    "max_risk": "风险上限",
    "networks": "来源网络",
    "not_networks": "排除网络",
    "schedule": "时段",
    "acr": "认证强度",
    "max_auth_age": "认证时效",
}


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one rule fared: ``failed`` names the conditions that did not hold (empty: it matched);
    ``unmet`` is set for a matching step_up rule whose sign-in requirement the request falls short of."""

    rule: Rule
    failed: tuple[str, ...]
    unmet: bool = False

    @property
    def matched(self) -> bool:
        return not self.failed


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    traces: tuple[RuleTrace, ...]
    text_en: str
    text_zh: str

    def text(self, locale: str = "zh_CN") -> str:
        return self.text_en if locale.startswith("en") else self.text_zh


def _in_networks(networks: tuple[Network, ...], r: Request) -> bool:
    return r.ip is not None and any(
        r.ip.version == cidr.version and r.ip in cidr for net in networks for cidr in net.cidrs
    )


def trace_rule(rule: Rule, r: Request, clock: Callable[[float], tuple[int, int]]) -> RuleTrace:
    """Every condition of ``rule`` checked against ``r``, one at a time (the plain reference)."""
    failed: list[str] = []
    if rule.paths and not any(p.matches(r.path) for p in rule.paths):
        failed.append("paths")
    if rule.not_paths and any(p.matches(r.path) for p in rule.not_paths):
        failed.append("not_paths")
    if rule.methods is not None and r.method not in rule.methods:
        failed.append("methods")
    if rule.has_subjects:
        if r.user is None or not (
            r.user in rule.users
            or rule.groups & r.groups
            or rule.departments & set(r.departments)
            or rule.roles & r.roles
        ):
            failed.append("subjects")
    elif r.user is None and not rule.admits_anonymous:
        failed.append("anonymous")
    if (
        rule.has_exceptions
        and r.user is not None
        and (
            r.user in rule.not_users
            or rule.not_groups & r.groups
            or rule.not_departments & set(r.departments)
            or rule.not_roles & r.roles
        )
    ):
        failed.append("not_subjects")
    if rule.min_risk is not None and r.risk < rule.min_risk:
        failed.append("min_risk")
    if rule.max_risk is not None and r.risk > rule.max_risk:
        failed.append("max_risk")
    if rule.networks and not _in_networks(rule.networks, r):
        failed.append("networks")
    if rule.not_networks and _in_networks(rule.not_networks, r):
        failed.append("not_networks")
    if rule.schedule:
        weekday, minute = clock(r.now)
        if not any(w.contains(weekday, minute) for w in rule.schedule):
            failed.append("schedule")
    acr_short = bool(rule.acr) and r.acr_rank < rule.acr_rank
    age = r.auth_age
    too_old = rule.max_auth_age is not None and (age is None or age > rule.max_auth_age)
    if rule.effect is Effect.STEP_UP:
        return RuleTrace(rule, tuple(failed), unmet=not failed and (acr_short or too_old))
    if acr_short:
        failed.append("acr")
    if too_old:
        failed.append("max_auth_age")
    return RuleTrace(rule, tuple(failed))


def combine(traces: tuple[RuleTrace, ...]) -> Decision:
    """Deny overrides; no allow is a default deny; an unmet step-up comes before allow."""
    matched = [t for t in traces if t.matched]
    denied = tuple(t.rule.id for t in matched if t.rule.effect is Effect.DENY)
    if denied:
        return Decision(Effect.DENY, Reason.DENIED_BY_RULE, denied)
    allowed = tuple(t.rule.id for t in matched if t.rule.effect is Effect.ALLOW)
    if not allowed:
        return Decision(Effect.DENY, Reason.NO_MATCHING_RULE)
    stepped = [t.rule for t in matched if t.unmet]
    if stepped:
        return step_up_decision(stepped)
    return Decision(Effect.ALLOW, Reason.ALLOWED, allowed)


def reference_decide(bundle: Bundle, r: Request) -> tuple[Decision, tuple[RuleTrace, ...]]:
    """The decision by plain evaluation of every rule (no index): what ``explain`` shows and what
    the compiled evaluator is tested against."""
    if r.app not in bundle.apps:
        return Decision(Effect.DENY, Reason.UNKNOWN_APP), ()
    clock = local_clock(bundle.timezone)
    traces = tuple(trace_rule(rule, r, clock) for rule in bundle.rules_for(r.app))
    return combine(traces), traces


def _where(rule: Rule) -> str:
    return f"{rule.source}:{rule.line}" if rule.source else f"line {rule.line}"


def _acr_name(urn: str | None) -> str:
    return urn.rsplit(":", 1)[-1] if urn else "-"


def _texts(app: str, decision: Decision, traces: tuple[RuleTrace, ...], r: Request) -> tuple[str, str]:
    rules = {t.rule.id: t.rule for t in traces}
    named = ", ".join(f"{i} ({_where(rules[i])})" if i in rules else i for i in decision.rule_ids)
    if decision.reason is Reason.UNKNOWN_APP:
        return (
            f"Denied: application {app!r} has no policy (every application must be declared).",
            f"拒绝：应用 {app!r} 没有策略（每个应用都须在策略中声明）。",
        )
    if decision.reason is Reason.DENIED_BY_RULE:
        return (
            f"Denied by rule {named}; a matching deny rule overrides every allow rule.",
            f"拒绝：规则 {named} 匹配；deny 规则优先于所有 allow 规则。",
        )
    if decision.reason is Reason.STEP_UP_REQUIRED and decision.step_up is not None:
        want = _acr_name(decision.step_up.acr)
        age = decision.step_up.max_age
        fresh_en = f", signed in within the last {age} s" if age is not None else ""
        fresh_zh = f"，且须在 {age} 秒内完成认证" if age is not None else ""
        have = r.acr.rsplit(":", 1)[-1] if r.acr else "-"
        return (
            f"Step-up required by rule {named}: sign in again with {want}{fresh_en} (now: {have}).",
            f"需要增强认证（规则 {named}）：请以 {want} 重新认证{fresh_zh}（当前：{have}）。",
        )
    if decision.reason is Reason.ALLOWED:
        return (
            f"Allowed by rule {named}; no deny rule matched.",
            f"允许：规则 {named} 匹配，且没有 deny 规则匹配。",
        )
    allows = sorted(
        (t for t in traces if t.rule.effect is Effect.ALLOW and not t.matched), key=lambda t: len(t.failed)
    )
    if not allows:
        return (
            "Denied by default: no allow rule applies to this application.",
            "默认拒绝：该应用没有任何 allow 规则。",
        )
    nearest = allows[0]
    return (
        f"Denied by default: no allow rule matched. Nearest: {nearest.rule.id} ({_where(nearest.rule)}), "
        f"which failed on {', '.join(nearest.failed)}.",
        f"默认拒绝：没有 allow 规则匹配。最接近的是 {nearest.rule.id}（{_where(nearest.rule)}），"
        f"未满足：{'、'.join(CONDITIONS[c] for c in nearest.failed)}。",
    )


class PolicyEngine:
    """One active bundle, ready to decide. Build a new engine for a new bundle and swap the
    reference; an engine never changes."""

    def __init__(self, bundle: Bundle, *, version: int | None = None) -> None:
        self.bundle = bundle
        self.version = version
        self.deciders: dict[str, AppDecider] = {}
        if any(app.cedar for app in bundle.apps.values()):
            from policy.cedar import RawCedarApp

            self.deciders = {
                name: RawCedarApp(app, bundle.timezone, bundle.rules_for(name))
                for name, app in bundle.apps.items()
                if app.cedar
            }
        self.compiled: CompiledPolicy = compile_bundle(bundle, self.deciders)
        # The hot path is the compiled evaluator's own method: no extra call layer.
        self.decide: Callable[[Request], Decision] = self.compiled.decide

    @classmethod
    def from_text(cls, text: str, source: str = "policy.yaml", *, version: int | None = None) -> PolicyEngine:
        return cls(load_bundle(text, source), version=version)

    @classmethod
    def deny_all(cls) -> PolicyEngine:
        """The engine with no applications: every request is denied (before any bundle is active)."""
        return cls(Bundle(apps={}))

    def explain(self, r: Request) -> Explanation:
        decider = self.deciders.get(r.app)
        if decider is not None:
            decision = decider.decide(r)
            ids = ", ".join(decision.rule_ids) or "-"
            return Explanation(
                decision,
                (),
                f"Decided by the Cedar policies of application {r.app!r}: {decision.effect.value} "
                f"(policies: {ids}).",
                f"由应用 {r.app!r} 的 Cedar 策略决定：{decision.effect.value}（策略：{ids}）。",
            )
        decision, traces = reference_decide(self.bundle, r)
        en, zh = _texts(r.app, decision, traces, r)
        return Explanation(decision, traces, en, zh)
