"""`onegate user mfa ...`: second factors from the command line (administrators).

* ``status USER`` — which factors the user has and whether a second factor is required of them;
* ``reset USER`` — removes every factor (authenticator apps, passkeys, recovery codes), for a
  lost phone or a stolen key; the user's SSO sessions end too (a thief's session must not
  outlive the reset). Audited: one ``mfa-reset`` event naming the operator;
* ``require USER`` / ``require USER --off`` — set up a second factor at the next sign-in;
* ``group GROUP`` / ``group GROUP --off`` — require a second factor of every member.

Like the rest of ``onegate``: ``--data-dir`` / ``--config``, ``--json`` for scripts, one line
``onegate: ...`` and exit status 2 on a problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from idp.directory import DirectoryError, UnknownUser
from onegate.cli_common import (
    ConfigFile,
    DataDir,
    Json,
    actor,
    emit_json,
    iam_event,
    settings_from,
    with_runtime,
)

if TYPE_CHECKING:
    from mfa.services import MfaServices
    from onegate.runtime import Runtime
from onegate.sessions import end_user_sessions

__all__ = ["app"]

app = typer.Typer(
    help="Second factors: status, reset, require at next sign-in, require per group.", no_args_is_help=True
)

Username = Annotated[str, typer.Argument(help="The user name.")]
Off = Annotated[bool, typer.Option("--off", help="Withdraw the requirement instead.")]


def _services(runtime: Runtime) -> MfaServices:
    return runtime.mfa


@app.command("status")
def status(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Show a user's second factors and whether one is required of them."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> dict[str, Any]:
        user = await runtime.directory.get_user(username)
        if user is None:
            raise UnknownUser(username)
        mfa = _services(runtime)
        by_group = await runtime.directory.mfa_required_by_group(user.id)
        return {
            "username": user.username,
            "authenticator_apps": [
                {"id": c.id, "name": c.name, "created_at": c.created_at.isoformat()}
                for c in await mfa.totp.list(user.id)
            ],
            "passkeys": [
                {"id": c.id, "name": c.name, "created_at": c.created_at.isoformat(), "aaguid": c.aaguid}
                for c in await mfa.webauthn.list(user.id)
            ],
            "recovery_codes_left": await mfa.recovery.remaining(user.id),
            "required": settings.mfa.required or user.mfa_enrol_required or by_group,
            "required_by": [
                name
                for name, on in (
                    ("everyone (mfa.required)", settings.mfa.required),
                    ("administrator (at next sign-in)", user.mfa_enrol_required),
                    ("group", by_group),
                )
                if on
            ],
        }

    record = with_runtime(settings, work, errors=(DirectoryError,))
    if as_json:
        emit_json(record)
        return
    apps = ", ".join(f"{c['name']} (#{c['id']})" for c in record["authenticator_apps"]) or "-"
    keys = ", ".join(f"{c['name']} (#{c['id']})" for c in record["passkeys"]) or "-"
    typer.echo(f"{'user name:':<22} {record['username']}")
    typer.echo(f"{'authenticator apps:':<22} {apps}")
    typer.echo(f"{'passkeys:':<22} {keys}")
    typer.echo(f"{'recovery codes left:':<22} {record['recovery_codes_left']}")
    required = ", ".join(record["required_by"]) if record["required"] else "no"
    typer.echo(f"{'second factor required:':<22} {required}")


@app.command("reset")
def reset(
    username: Username, data_dir: DataDir = None, config: ConfigFile = None, as_json: Json = False
) -> None:
    """Remove every second factor of a user and end their sessions (lost or stolen device)."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> dict[str, Any]:
        user = await runtime.directory.get_user(username)
        if user is None:
            raise UnknownUser(username)
        removed = await _services(runtime).reset(user.id, actor=actor())
        ended = await end_user_sessions(
            runtime,
            user_id=user.id,
            sub=user.sub,
            username=user.username,
            reason="mfa-reset",
            actor=actor(),
            events=runtime.bus,
        )
        return {
            "username": user.username,
            "authenticator_apps_removed": removed.totp,
            "passkeys_removed": removed.webauthn,
            "recovery_codes_removed": removed.recovery_left,
            "sessions_ended": ended.idp + ended.gateway,
        }

    record = with_runtime(settings, work, errors=(DirectoryError,))
    if as_json:
        emit_json(record)
        return
    typer.echo(
        f"{record['username']}: removed {record['authenticator_apps_removed']} authenticator app(s), "
        f"{record['passkeys_removed']} passkey(s), {record['recovery_codes_removed']} recovery code(s); "
        f"ended {record['sessions_ended']} session(s)"
    )


@app.command("require")
def require(
    username: Username, off: Off = False, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Make the user set up a second factor at their next sign-in (`--off` withdraws it)."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> str:
        user = await runtime.directory.set_mfa_enrol_required(username, not off)
        runtime.bus.emit(
            iam_event(
                "mfa-enrolment-required" if not off else "mfa-enrolment-request-withdrawn",
                user,
                types=("user", "change"),
            )
        )
        return user.username

    name = with_runtime(settings, work, errors=(DirectoryError,))
    typer.echo(
        f"{name}: a second factor is {'no longer requested' if off else 'required from the next sign-in'}"
    )


@app.command("group")
def group(
    name: Annotated[str, typer.Argument(help="Group name.")],
    off: Off = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Require a second factor of every member of a group (`--off` withdraws it)."""
    settings = settings_from(data_dir, config)

    async def work(runtime: Runtime) -> str:
        found = await runtime.directory.set_group_mfa_required(name, not off)
        runtime.bus.emit(
            iam_event(
                "group-mfa-required" if not off else "group-mfa-optional",
                types=("group", "change"),
                onegate__group=found.name,
            )
        )
        return found.name

    group_name = with_runtime(settings, work, errors=(DirectoryError,))
    typer.echo(
        f"group {group_name}: members {'may sign in without' if off else 'must sign in with'} a second factor"
    )
