"""Sign-in attacks: brute force, spraying, credential stuffing, and what succeeds after them.

They read the IdP's ``user-login`` events (``onegate.reason`` says why one failed:
``unknown_user``, ``bad_password``, ``locked``, ``throttled`` ...) and the MFA events.
Default thresholds follow common published practice: ten failures lock an account in
Microsoft Entra's smart lockout and trip Elastic's brute-force rules; spraying is one address
failing against many existing accounts, credential stuffing one address trying many accounts
of which most do not exist here (a leaked list from elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soc.detections.engine import Context, event_time
from soc.detections.model import RuleInfo, Severity, Signal, Text
from soc.detections.rules.common import action, event_id, failed, field, succeeded

__all__ = [
    "BruteForce",
    "CredentialStuffing",
    "DistributedSpraying",
    "FailuresThenSuccess",
    "MfaFatigue",
    "PasswordSpraying",
    "SuccessAfterAttack",
    "rules",
]

# Reasons that mean "a password was tried and was wrong" (not: the guard refused to try).
_GUESS_REASONS = frozenset({"bad_password", "unknown_user"})


def _login(doc: Mapping[str, Any]) -> bool:
    return action(doc) == "user-login"


def _guess(doc: Mapping[str, Any]) -> bool:
    return _login(doc) and failed(doc) and field(doc, "onegate.reason") in _GUESS_REASONS


class BruteForce:
    """Many failed sign-ins for one account, from anywhere."""

    info = RuleInfo(
        id="onegate.brute-force",
        name=Text("Brute force on one account", "单一账号暴力破解"),
        description=Text(
            "Many failed sign-ins for one account within a few minutes.",
            "同一账号在数分钟内多次登录失败。",
        ),
        severity=Severity.MEDIUM,
        risk_score=47,
        technique="T1110.001",
        tactic="credential-access",
        suppress_by=("user.name",),
        params={"threshold": 10, "window_s": 300},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _login(doc) and failed(doc) and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        user = field(doc, "user.name") or ""
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        failures = await ctx.window("failures", user.lower(), event_id(doc), at=at, span=span)
        threshold = int(ctx.param("threshold"))
        if failures.count < threshold:
            return None
        minutes = round(span / 60)
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip"),
            await ctx.evidence("failures", user.lower(), event_id(doc), at=at, span=span),
            Text(
                f"{failures.count} failed sign-ins for {user} within {minutes} min",
                f"账号 {user} 在 {minutes} 分钟内登录失败 {failures.count} 次",
            ),
            {"failures": failures.count, "threshold": threshold, "window_s": span},
        )


class FailuresThenSuccess:
    """A successful sign-in to an account that just failed several times."""

    info = RuleInfo(
        id="onegate.failures-then-success",
        name=Text("Sign-in success after repeated failures", "多次失败后登录成功"),
        description=Text(
            "An account signed in successfully after several failed attempts within minutes.",
            "账号在数分钟内多次登录失败后登录成功。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1110",
        tactic="credential-access",
        suppress_by=("user.name",),
        params={"failures": 5, "window_s": 600},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _login(doc) and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        user = field(doc, "user.name") or ""
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        if failed(doc):
            await ctx.window("failures", user.lower(), event_id(doc), at=at, span=span)
            return None
        if not succeeded(doc):
            return None
        failures = await ctx.window("failures", user.lower(), None, at=at, span=span)
        needed = int(ctx.param("failures"))
        if failures.count < needed:
            return None
        minutes = round(span / 60)
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip", "session.id"),
            await ctx.evidence("failures", user.lower(), event_id(doc), at=at, span=span),
            Text(
                f"{user} signed in after {failures.count} failures within {minutes} min",
                f"账号 {user} 在 {minutes} 分钟内失败 {failures.count} 次后登录成功",
            ),
            {"failures": failures.count, "threshold": needed, "window_s": span},
        )


class _FromOneSource:
    """Failed guesses from one address over many accounts: spraying or stuffing, told apart by
    the share of accounts that do not exist here."""

    info: RuleInfo

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _guess(doc) and field(doc, "source.ip") is not None and field(doc, "user.name") is not None

    async def _counts(self, doc: Mapping[str, Any], ctx: Context) -> tuple[int, int, float, float]:
        source = field(doc, "source.ip") or ""
        user = (field(doc, "user.name") or "").lower()
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        accounts = await ctx.window("accounts", source, user, at=at, span=span)
        unknown = await ctx.window(
            "unknown",
            source,
            user if field(doc, "onegate.reason") == "unknown_user" else None,
            at=at,
            span=span,
        )
        return accounts.count, unknown.count, at, span

    def _fits(self, share: float, ctx: Context) -> bool:
        """Whether ``share`` (of the accounts that do not exist here) is this rule's kind."""
        raise NotImplementedError

    def _reason(self, source: str | None, accounts: int, unknown: int, minutes: int) -> Text:
        raise NotImplementedError

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        accounts, unknown, at, span = await self._counts(doc, ctx)
        threshold = int(ctx.param("accounts"))
        if accounts < threshold or not self._fits(unknown / accounts, ctx):
            return None
        return Signal(
            self.info,
            at,
            _entity(doc, "source.ip"),
            (event_id(doc),),
            self._reason(field(doc, "source.ip"), accounts, unknown, round(span / 60)),
            {"accounts": accounts, "unknown_accounts": unknown, "threshold": threshold, "window_s": span},
        )


class PasswordSpraying(_FromOneSource):
    info = RuleInfo(
        id="onegate.password-spraying",
        name=Text("Password spraying from one address", "单一来源口令喷洒"),
        description=Text(
            "One address failed to sign in to many existing accounts: a few common passwords "
            "tried against each.",
            "同一来源地址对大量已存在账号登录失败，疑似以少量常用口令逐一尝试。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1110.003",
        tactic="credential-access",
        suppress_by=("source.ip",),
        params={"accounts": 10, "window_s": 600, "max_unknown_share": 0.5},
    )

    def _fits(self, share: float, ctx: Context) -> bool:
        return share < float(ctx.param("max_unknown_share"))

    def _reason(self, source: str | None, accounts: int, unknown: int, minutes: int) -> Text:
        return Text(
            f"{source} failed to sign in to {accounts} accounts within {minutes} min",
            f"来源 {source} 在 {minutes} 分钟内对 {accounts} 个账号登录失败",
        )


class CredentialStuffing(_FromOneSource):
    info = RuleInfo(
        id="onegate.credential-stuffing",
        name=Text("Credential stuffing from one address", "单一来源撞库攻击"),
        description=Text(
            "One address tried many accounts, most of which do not exist here: a list of "
            "credentials leaked elsewhere.",
            "同一来源地址尝试大量账号，其中多数在本系统中不存在，疑似使用外部泄露的账号口令撞库。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1110.004",
        tactic="credential-access",
        suppress_by=("source.ip",),
        params={"accounts": 10, "window_s": 600, "min_unknown_share": 0.5},
    )

    def _fits(self, share: float, ctx: Context) -> bool:
        return share >= float(ctx.param("min_unknown_share"))

    def _reason(self, source: str | None, accounts: int, unknown: int, minutes: int) -> Text:
        return Text(
            f"{source} tried {accounts} accounts within {minutes} min, {unknown} of them unknown",
            f"来源 {source} 在 {minutes} 分钟内尝试 {accounts} 个账号，其中 {unknown} 个不存在",
        )


class DistributedSpraying:
    """Failures against many accounts from many addresses, each of them quiet."""

    info = RuleInfo(
        id="onegate.distributed-spraying",
        name=Text("Distributed password spraying", "分布式口令喷洒"),
        description=Text(
            "Failed sign-ins against many accounts from many addresses within half an hour, "
            "each address staying below the per-address limits.",
            "半小时内大量账号从众多来源地址登录失败，每个来源均低于单来源阈值。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1110.003",
        tactic="credential-access",
        suppress_by=("event.dataset",),
        params={"accounts": 20, "sources": 5, "window_s": 1800},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _guess(doc) and field(doc, "source.ip") is not None and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        dataset = field(doc, "event.dataset") or "onegate.idp"
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        user = (field(doc, "user.name") or "").lower()
        accounts = await ctx.window("accounts", dataset, user, at=at, span=span)
        sources = await ctx.window("sources", dataset, field(doc, "source.ip"), at=at, span=span)
        await ctx.window("targeted", user, dataset, at=at, span=span)  # for "success after attack"
        need_accounts, need_sources = int(ctx.param("accounts")), int(ctx.param("sources"))
        if accounts.count < need_accounts or sources.count < need_sources:
            return None
        minutes = round(span / 60)
        return Signal(
            self.info,
            at,
            {"event.dataset": dataset},
            (event_id(doc),),
            Text(
                f"{accounts.count} accounts failed to sign in from {sources.count} addresses "
                f"within {minutes} min",
                f"{minutes} 分钟内 {accounts.count} 个账号从 {sources.count} 个来源地址登录失败",
            ),
            {
                "accounts": accounts.count,
                "sources": sources.count,
                "threshold_accounts": need_accounts,
                "threshold_sources": need_sources,
                "window_s": span,
            },
        )


class SuccessAfterAttack:
    """A successful sign-in to an account under brute force, or from an address that sprayed or
    stuffed credentials: the attack probably worked."""

    info = RuleInfo(
        id="onegate.success-after-attack",
        name=Text("Successful sign-in after a password attack", "口令攻击后登录成功"),
        description=Text(
            "An account signed in while it was the target of brute force, or from an address "
            "that was spraying or stuffing credentials, or during distributed spraying that "
            "included it.",
            "账号在遭受暴力破解期间登录成功，或登录来源正在进行口令喷洒/撞库，或该账号处于分布式喷洒目标中。",
        ),
        severity=Severity.CRITICAL,
        risk_score=99,
        technique="T1078",
        tactic="initial-access",
        suppress_by=("user.name",),
        params={},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return _login(doc) and succeeded(doc) and field(doc, "user.name") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        user = field(doc, "user.name") or ""
        source = field(doc, "source.ip")
        at = event_time(doc)
        found: list[tuple[str, Text]] = []

        brute = ctx.params_of(BruteForce.info)
        failures = await ctx.window_of(
            BruteForce.info.id, "failures", user.lower(), at=at, span=float(brute["window_s"])
        )
        if failures.count >= int(brute["threshold"]):
            found.append((BruteForce.info.id, BruteForce.info.name))
        if source is not None:
            stuffing_share = float(ctx.params_of(CredentialStuffing.info)["min_unknown_share"])
            for rule in (PasswordSpraying, CredentialStuffing):
                params = ctx.params_of(rule.info)
                span = float(params["window_s"])
                accounts = await ctx.window_of(rule.info.id, "accounts", source, at=at, span=span)
                if accounts.count < int(params["accounts"]):
                    continue
                unknown = await ctx.window_of(rule.info.id, "unknown", source, at=at, span=span)
                share = unknown.count / accounts.count
                stuffing = share >= stuffing_share
                if stuffing == (rule is CredentialStuffing):
                    found.append((rule.info.id, rule.info.name))
        dataset = field(doc, "event.dataset") or "onegate.idp"
        spread = ctx.params_of(DistributedSpraying.info)
        span = float(spread["window_s"])
        accounts = await ctx.window_of(DistributedSpraying.info.id, "accounts", dataset, at=at, span=span)
        sources = await ctx.window_of(DistributedSpraying.info.id, "sources", dataset, at=at, span=span)
        if accounts.count >= int(spread["accounts"]) and sources.count >= int(spread["sources"]):
            # Only when this account was among the targets.
            mine = await ctx.window_of(
                DistributedSpraying.info.id, "targeted", user.lower(), at=at, span=span
            )
            if mine.count:
                found.append((DistributedSpraying.info.id, DistributedSpraying.info.name))
        if not found:
            return None
        attacks_en = ", ".join(name.en.lower() for _, name in found)
        attacks_zh = "、".join(name.zh for _, name in found)
        return Signal(
            self.info,
            at,
            _entity(doc, "user.name", "source.ip", "session.id"),
            (event_id(doc),),
            Text(f"{user} signed in during {attacks_en}", f"账号 {user} 在{attacks_zh}期间登录成功"),
            {"attacks": [rule_id for rule_id, _ in found]},
        )


class MfaFatigue:
    """Repeated second-factor failures for one account: push bombing, or a stolen password
    meeting the second factor."""

    info = RuleInfo(
        id="onegate.mfa-fatigue",
        name=Text("Repeated second-factor failures", "第二重验证多次失败"),
        description=Text(
            "An account failed its second factor many times within minutes: its password is "
            "probably known to someone else.",
            "同一账号在数分钟内多次第二重验证失败，其口令可能已被他人掌握。",
        ),
        severity=Severity.HIGH,
        risk_score=73,
        technique="T1621",
        tactic="credential-access",
        suppress_by=("user.id",),
        params={"failures": 5, "window_s": 600},
    )

    def wants(self, doc: Mapping[str, Any]) -> bool:
        return action(doc) in ("mfa-failed", "mfa-replayed") and field(doc, "user.id") is not None

    async def check(self, doc: Mapping[str, Any], ctx: Context) -> Signal | None:
        user = field(doc, "user.id") or ""
        at = event_time(doc)
        span = float(ctx.param("window_s"))
        failures = await ctx.window("failures", user, event_id(doc), at=at, span=span)
        needed = int(ctx.param("failures"))
        if failures.count < needed:
            return None
        who = field(doc, "user.name") or f"#{user}"
        minutes = round(span / 60)
        return Signal(
            self.info,
            at,
            _entity(doc, "user.id", "user.name", "source.ip"),
            await ctx.evidence("failures", user, event_id(doc), at=at, span=span),
            Text(
                f"{failures.count} second-factor failures for {who} within {minutes} min",
                f"账号 {who} 在 {minutes} 分钟内第二重验证失败 {failures.count} 次",
            ),
            {"failures": failures.count, "threshold": needed, "window_s": span},
        )


def _entity(doc: Mapping[str, Any], *names: str) -> dict[str, str]:
    return {name: value for name in names if (value := field(doc, name)) is not None}


def rules() -> list[Any]:
    return [
        BruteForce(),
        FailuresThenSuccess(),
        PasswordSpraying(),
        CredentialStuffing(),
        DistributedSpraying(),
        SuccessAfterAttack(),
        MfaFatigue(),
    ]
