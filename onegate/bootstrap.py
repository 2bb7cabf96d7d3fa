"""`onegate init`: data dir, schema, keys and the first administrator. Safe to run again."""

from __future__ import annotations

from dataclasses import dataclass

from core.db import DatabaseUnavailable, check_database, create_engine, migrate
from core.events import Category, Event, Outcome
from core.settings import Settings
from keyvault import KeyvaultError, init_keyvault
from onegate.runtime import MIGRATIONS, StartupError, open_runtime

__all__ = ["ADMIN_GROUPS", "ADMIN_USERNAME", "CSRF_KEY_NAME", "InitResult", "initialise"]

ADMIN_USERNAME = "admin"
CSRF_KEY_NAME = "csrf"
# The three separated administrator roles (三员分立); none can do another's work.
ADMIN_GROUPS = {
    "sys-admins": "系统管理员 System administrators: users, applications, keys",
    "sec-admins": "安全管理员 Security administrators: policies, MFA rules, response",
    "auditors": "审计管理员 Audit administrators: read the audit log, change nothing",
}


@dataclass(frozen=True)
class InitResult:
    data_dir: str
    database: str
    created_admin: bool
    admin_username: str
    # Shown once and never stored in clear: only its argon2id hash is kept.
    admin_password: str | None


async def initialise(settings: Settings) -> InitResult:
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    options = settings.keyvault
    try:
        vault = init_keyvault(
            data_dir,
            suite=options.suite,
            signing_alg=options.signing_alg,
            prepublish_seconds=options.prepublish_seconds,
            retire_after_seconds=options.retire_after_seconds,
        )
        vault.secrets.get_or_create(CSRF_KEY_NAME)
    except KeyvaultError as e:
        raise StartupError(str(e)) from e
    engine = create_engine(settings.database_url, connect_timeout=settings.database.connect_timeout)
    try:
        await check_database(engine)
        await migrate(engine, MIGRATIONS)
    except DatabaseUnavailable as e:
        raise StartupError(str(e)) from e
    finally:
        await engine.dispose()

    runtime = await open_runtime(settings)
    try:
        for name, description in ADMIN_GROUPS.items():
            if await runtime.directory.get_group(name) is None:
                await runtime.directory.ensure_group(name, description)
                # Administrators sign in with a second factor from the start (set once, at
                # creation: an operator's `onegate user mfa group NAME --off` is not undone).
                await runtime.directory.set_group_mfa_required(name, True)
        password = None
        if await runtime.directory.get_user(ADMIN_USERNAME) is None:
            from idp.directory.passwords import generate_password  # the servers import this module

            password = generate_password()
            await runtime.directory.add_user(
                username=ADMIN_USERNAME,
                display_name="系统管理员",
                password_hash=runtime.directory.hashing.hash(password),
                groups=("sys-admins",),
                must_change_password=True,
            )
            runtime.bus.emit(
                Event(
                    action="user-created",
                    category=Category.IAM,
                    outcome=Outcome.SUCCESS,
                    dataset="onegate.cli",
                    fields={"user.name": ADMIN_USERNAME, "user.roles": ["sys-admins"]},
                )
            )
    finally:
        await runtime.close()
    return InitResult(
        data_dir=str(data_dir.resolve()),
        database=runtime.engine.url.render_as_string(hide_password=True),
        created_admin=password is not None,
        admin_username=ADMIN_USERNAME,
        admin_password=password,
    )
