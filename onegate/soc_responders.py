"""The SOC's response actions, carried out by the components that own what they change.

soc records and decides; it imports neither the IdP nor the gateway (the dependency points from
here to it). :func:`responders` gives :class:`soc.response.services.ResponseService` one
function per action, each using the same code path as the administration commands:

* revoke-sessions: end the user's IdP and gateway sessions (every gateway refuses them on the
  next request: ``onegate.sessions.end_user_sessions``);
* lock-account: the directory's lock, then the sessions end, as ``onegate user lock`` does;
* block-address: the gateway's blocked addresses (``gateway.blocks``), with an expiry;
* raise-risk: the user's risk score for the policy (``gateway.risk``), with an expiry;
* force-mfa-reenrolment: remove every second factor, require a new one at the next sign-in,
  end the sessions (a stolen or cloned authenticator).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.events import Category, Event, Outcome
from gateway.blocks import AddressBlocks
from gateway.risk import RiskScores
from idp.directory.models import User
from idp.events import auth_event
from onegate.runtime import Runtime
from onegate.sessions import end_user_sessions
from soc.detections.model import Text
from soc.response.services import Action, Responder, ResponseError

__all__ = ["responders"]


def responders(runtime: Runtime) -> dict[Action, Responder]:
    """Every response action, bound to this process's runtime (its database and KV)."""

    async def user_of(username: str) -> User:
        user = await runtime.directory.get_user(username)
        if user is None:
            raise ResponseError("unknown_user", f"no user {username!r}", f"用户“{username}”不存在")
        return user

    async def end_sessions(user: User, actor: str, reason: str) -> int:
        ended = await end_user_sessions(
            runtime,
            user_id=user.id,
            sub=user.sub,
            username=user.username,
            reason=reason,
            actor=actor,
            events=runtime.bus,
        )
        return ended.idp + ended.gateway

    async def revoke_sessions(target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
        ended = await end_sessions(await user_of(target), actor, "soc-response")
        return Text(f"{ended} sessions of {target} ended", f"已结束 {target} 的 {ended} 个会话")

    async def lock_account(target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
        result = await runtime.directory.lock(target)
        runtime.bus.emit(
            auth_event(
                "user-locked",
                success=True,
                reason="soc-response",
                username=result.user.username,
                user_id=result.user.id,
                event__type=["user", "change"],
                labels__actor=actor,
                labels__previous_status=result.previous.value,
            )
        )
        ended = await end_sessions(result.user, actor, "locked")
        return Text(f"{target} locked, {ended} sessions ended", f"已锁定 {target}，结束 {ended} 个会话")

    async def block_address(target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
        seconds = float(params["seconds"])
        block = await AddressBlocks(runtime.kv).block(target, seconds=seconds, reason=reason, actor=actor)
        runtime.bus.emit(
            Event(
                action="address-blocked",
                category=Category.NETWORK,
                outcome=Outcome.SUCCESS,
                dataset="onegate.gateway",
                fields={
                    "labels.network": block.network,
                    "labels.actor": actor,
                    "event.duration": int(seconds * 1e9),
                },
            )
        )
        hours = round(seconds / 3600, 1)
        return Text(
            f"{block.network} blocked at the gateway for {hours} h",
            f"已在网关封禁 {block.network} {hours} 小时",
        )

    async def raise_risk(target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
        await user_of(target)
        score, seconds = int(params["score"]), float(params["seconds"])
        await RiskScores(runtime.kv).set(target, score, ttl=seconds)
        hours = round(seconds / 3600, 1)
        return Text(
            f"risk score of {target} set to {score} for {hours} h",
            f"已将 {target} 的风险评分设为 {score}，持续 {hours} 小时",
        )

    async def force_mfa_reenrolment(
        target: str, params: Mapping[str, Any], *, actor: str, reason: str
    ) -> Text:
        user = await user_of(target)
        removed = await runtime.mfa.reset(user.id, actor=actor)
        await runtime.directory.set_mfa_enrol_required(user.username, True)
        ended = await end_sessions(user, actor, "mfa-reset")
        factors = removed.totp + removed.webauthn
        return Text(
            f"{factors} second factors of {target} removed, a new one required, {ended} sessions ended",
            f"已移除 {target} 的 {factors} 个第二重验证因素并要求重新注册，结束 {ended} 个会话",
        )

    return {
        Action.REVOKE_SESSIONS: revoke_sessions,
        Action.LOCK_ACCOUNT: lock_account,
        Action.BLOCK_ADDRESS: block_address,
        Action.RAISE_RISK: raise_risk,
        Action.FORCE_MFA_REENROLMENT: force_mfa_reenrolment,
    }
