"""Directory operations on the SQL tables: users, groups, departments, passwords, lockout state.

Every method runs in a transaction of its own and returns plain values (values.py) or
detached rows (sessions keep loaded attributes after commit). Admin operations name a user
by ``username``; operations on the sign-in and token paths (passwords, lockout, profile) by
the numeric ``user_id`` the SSO session carries.

Errors are one family, :class:`~idp.directory.errors.DirectoryError` (errors.py), each naming
the offending value; a refused password raises :class:`~idp.directory.errors.PasswordRejected`
with the policy's reason codes (never the password).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from idp.directory.errors import (
    DepartmentExists,
    DirectoryError,
    InvalidValue,
    PasswordRejected,
    UnknownDepartment,
    UnknownGroup,
    UnknownUser,
    UserExists,
)
from idp.directory.models import Department, Group, Membership, User, UserStatus
from idp.directory.passwords import PasswordHashing, generate_password
from idp.directory.policy import PasswordPolicy, PolicyReason
from idp.directory.values import (
    DepartmentNode,
    GroupSummary,
    StatusChange,
    UserProfile,
    as_utc,
    clean_display_name,
    clean_email,
    clean_phone,
    normalise_code,
    normalise_username,
    sign_in_blocked,
)

__all__ = [
    "DepartmentExists",
    "DepartmentNode",
    "Directory",
    "DirectoryError",
    "GroupSummary",
    "InvalidValue",
    "PasswordRejected",
    "StatusChange",
    "UnknownDepartment",
    "UnknownGroup",
    "UnknownUser",
    "UserExists",
    "UserProfile",
    "as_utc",
    "clean_display_name",
    "clean_email",
    "clean_phone",
    "normalise_code",
    "normalise_username",
    "sign_in_blocked",
]

_UNSET: Final[Any] = object()


# -- the service ------------------------------------------------------------------------------


class Directory:
    """Users, groups and departments. Every method runs in a transaction of its own.

    ``hashing`` and ``policy`` default to argon2id with OWASP parameters and a policy with the
    default minimum length; assembly passes ``PasswordPolicy(min_length=settings.idp.
    password_min_length)``. ``clock`` returns Unix seconds (tests fix it).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        *,
        hashing: PasswordHashing | None = None,
        policy: PasswordPolicy | None = None,
        clock: Callable[[], float] = time.time,
        new_password: Callable[[], str] = generate_password,
    ) -> None:
        self._sessions = sessions
        self._hashing = hashing
        self.policy = policy or PasswordPolicy()
        self._clock = clock
        self._new_password = new_password

    @property
    def hashing(self) -> PasswordHashing:
        # Made on first use: building one hashes a dummy password (~20 ms) that lookups never need.
        if self._hashing is None:
            self._hashing = PasswordHashing()
        return self._hashing

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def hash_password(self, password: str) -> str:
        """argon2id in a worker thread, so a ~20 ms hash does not stall the event loop."""
        return await asyncio.to_thread(self.hashing.hash, password)

    # -- users: reading -------------------------------------------------------------------

    async def get_user(self, username: str) -> User | None:
        async with self._sessions() as s:
            user: User | None = (
                await s.execute(select(User).where(User.username == username.strip().lower()))
            ).scalar_one_or_none()
            return user

    async def get_user_by_id(self, user_id: int) -> User | None:
        async with self._sessions() as s:
            user: User | None = await s.get(User, user_id)
            return user

    async def get_user_by_sub(self, sub: str) -> User | None:
        async with self._sessions() as s:
            user: User | None = (await s.execute(select(User).where(User.sub == sub))).scalar_one_or_none()
            return user

    def _filtered(
        self, query: Select[Any], status: UserStatus | None, department: str | None, group: str | None
    ) -> Select[Any]:
        if status is not None:
            query = query.where(User.status == status)
        if department is not None:
            query = query.join(Department, Department.id == User.department_id).where(
                Department.code == department.strip().lower()
            )
        if group is not None:
            query = (
                query.join(Membership, Membership.user_id == User.id)
                .join(Group, Group.id == Membership.group_id)
                .where(Group.name == group.strip().lower())
            )
        return query

    async def list_users(
        self,
        *,
        status: UserStatus | None = None,
        department: str | None = None,
        group: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[User]:
        """Users by username; ``department`` is a code (that department only), ``group`` a name."""
        query = self._filtered(select(User), status, department, group)
        query = query.order_by(User.username).offset(max(offset, 0)).limit(max(limit, 0))
        async with self._sessions() as s:
            return list((await s.execute(query)).scalars())

    async def count_users(
        self, *, status: UserStatus | None = None, department: str | None = None, group: str | None = None
    ) -> int:
        query = self._filtered(select(func.count(User.id)), status, department, group)
        async with self._sessions() as s:
            return int((await s.execute(query)).scalar_one())

    async def profile(self, user_id: int) -> UserProfile | None:
        """The claims-relevant view of a user in one query (it is on the token path), or None."""
        query = (
            select(
                User.sub,
                User.username,
                User.display_name,
                User.email,
                User.phone,
                User.status,
                Department.name.label("department"),
                Department.code.label("department_code"),
                Group.name.label("group"),
            )
            .select_from(User)
            .outerjoin(Department, Department.id == User.department_id)
            .outerjoin(Membership, Membership.user_id == User.id)
            .outerjoin(Group, Group.id == Membership.group_id)
            .where(User.id == user_id)
            .order_by(Group.name)
        )
        async with self._sessions() as s:
            rows = (await s.execute(query)).all()
        if not rows:
            return None
        first = rows[0]
        chain = await self.department_chain(first.department_code) if first.department_code else ()
        return UserProfile(
            sub=first.sub,
            username=first.username,
            display_name=first.display_name,
            email=first.email,
            phone=first.phone,
            department=first.department,
            department_code=first.department_code,
            groups=tuple(row.group for row in rows if row.group is not None),
            status=UserStatus(first.status),
            departments=chain,
        )

    async def profile_by_sub(self, sub: str) -> UserProfile | None:
        user = await self.get_user_by_sub(sub)
        return None if user is None else await self.profile(user.id)

    # -- users: writing -------------------------------------------------------------------

    @staticmethod
    async def _user(s: AsyncSession, username: str) -> User:
        user: User | None = (
            await s.execute(select(User).where(User.username == username.strip().lower()))
        ).scalar_one_or_none()
        if user is None:
            raise UnknownUser(username)
        return user

    @staticmethod
    async def _user_by_id(s: AsyncSession, user_id: int) -> User:
        user: User | None = await s.get(User, user_id)
        if user is None:
            raise UnknownUser(user_id)
        return user

    @staticmethod
    async def _group(s: AsyncSession, name: str) -> Group:
        group: Group | None = (
            await s.execute(select(Group).where(Group.name == name.strip().lower()))
        ).scalar_one_or_none()
        if group is None:
            raise UnknownGroup(name)
        return group

    @staticmethod
    async def _department(s: AsyncSession, code: str) -> Department:
        department: Department | None = (
            await s.execute(select(Department).where(Department.code == code.strip().lower()))
        ).scalar_one_or_none()
        if department is None:
            raise UnknownDepartment(code)
        return department

    async def add_user(
        self,
        *,
        username: str,
        display_name: str,
        password_hash: str | None,
        groups: tuple[str, ...] = (),
        must_change_password: bool = False,
        email: str | None = None,
        phone: str | None = None,
        department: str | None = None,
    ) -> User:
        """A new active user; ``department`` is a code and ``groups`` names, all of which must exist.

        Raises :class:`UserExists`, :class:`UnknownGroup`, :class:`UnknownDepartment` or
        :class:`InvalidValue`; nothing is written then.
        """
        name = normalise_username(username)
        values = {
            "display_name": clean_display_name(display_name),
            "email": clean_email(email),
            "phone": clean_phone(phone),
        }
        try:
            async with self._sessions() as s, s.begin():
                if (await s.execute(select(User.id).where(User.username == name))).first() is not None:
                    raise UserExists(name)
                department_id = (await self._department(s, department)).id if department else None
                member_of = [await self._group(s, group) for group in dict.fromkeys(groups)]
                user = User(
                    sub=secrets.token_hex(16),  # opaque and stable: never derived from the username
                    username=name,
                    password_hash=password_hash,
                    must_change_password=must_change_password,
                    department_id=department_id,
                    status=UserStatus.ACTIVE,
                    lockout_count=0,
                    **values,
                )
                s.add(user)
                await s.flush()
                s.add_all(Membership(user_id=user.id, group_id=group.id) for group in member_of)
                return user
        except IntegrityError as e:  # a concurrent add of the same username won the race
            raise UserExists(name) from e

    async def add_user_with_one_time_password(
        self,
        *,
        username: str,
        display_name: str,
        groups: tuple[str, ...] = (),
        email: str | None = None,
        phone: str | None = None,
        department: str | None = None,
    ) -> tuple[User, str]:
        """A new user with a generated one-time password, returned once and stored hashed only;
        the user must change it at the first sign-in."""
        password = self._new_password()
        user = await self.add_user(
            username=username,
            display_name=display_name,
            password_hash=await self.hash_password(password),
            groups=groups,
            must_change_password=True,
            email=email,
            phone=phone,
            department=department,
        )
        return user, password

    async def update_user(
        self,
        username: str,
        *,
        display_name: str = _UNSET,
        email: str | None = _UNSET,
        phone: str | None = _UNSET,
        department: str | None = _UNSET,
    ) -> User:
        """Change the given fields (None clears email, phone or department)."""
        async with self._sessions() as s, s.begin():
            user = await self._user(s, username)
            if display_name is not _UNSET:
                user.display_name = clean_display_name(display_name)
            if email is not _UNSET:
                user.email = clean_email(email)
            if phone is not _UNSET:
                user.phone = clean_phone(phone)
            if department is not _UNSET:
                user.department_id = (await self._department(s, department)).id if department else None
            return user

    async def _set_status(self, username: str, change: Callable[[User], None]) -> StatusChange:
        async with self._sessions() as s, s.begin():
            user = await self._user(s, username)
            previous = user.status
            change(user)
            return StatusChange(user=user, previous=previous)

    async def lock(self, username: str) -> StatusChange:
        """An administrator's lock: no sign-in until unlocked (whatever the lockout timer says)."""

        def apply(user: User) -> None:
            user.status = UserStatus.LOCKED

        return await self._set_status(username, apply)

    async def unlock(self, username: str) -> StatusChange:
        """Lift an administrator's lock and any automatic lockout; a disabled user stays disabled."""

        def apply(user: User) -> None:
            if user.status is UserStatus.LOCKED:
                user.status = UserStatus.ACTIVE
            user.locked_until = None
            user.lockout_count = 0

        return await self._set_status(username, apply)

    async def disable(self, username: str) -> StatusChange:
        """Switch the account off (a leaver): no sign-in, no token refresh, until enabled."""

        def apply(user: User) -> None:
            user.status = UserStatus.DISABLED

        return await self._set_status(username, apply)

    async def enable(self, username: str) -> StatusChange:
        """Switch a disabled account back on; a locked account stays locked (use unlock)."""

        def apply(user: User) -> None:
            if user.status is UserStatus.DISABLED:
                user.status = UserStatus.ACTIVE

        return await self._set_status(username, apply)

    async def reset_password(self, username: str) -> tuple[User, str]:
        """A generated one-time password (returned once, stored hashed) to change at next sign-in."""
        password = self._new_password()
        password_hash = await self.hash_password(password)
        async with self._sessions() as s, s.begin():
            user = await self._user(s, username)
            user.password_hash = password_hash
            user.must_change_password = True
            return user, password

    async def set_password(self, user_id: int, password: str) -> User:
        """The user's own new password: policy-checked, then stored; clears must_change_password.

        Raises :class:`PasswordRejected` with the policy's reason codes, or ``reused`` when the
        new password is the current one (the one-time password cannot become permanent).
        """
        user = await self.get_user_by_id(user_id)
        if user is None:
            raise UnknownUser(user_id)
        verdict = self.policy.check(password, username=user.username)
        if not verdict.ok:
            raise PasswordRejected(verdict.reasons)
        if user.password_hash is not None and await asyncio.to_thread(
            self.hashing.verify, user.password_hash, password
        ):
            raise PasswordRejected((PolicyReason.REUSED.value,))
        password_hash = await self.hash_password(password)
        async with self._sessions() as s, s.begin():
            user = await self._user_by_id(s, user_id)
            user.password_hash = password_hash
            user.must_change_password = False
            user.password_changed_at = self._now()
            return user

    async def verify_password(self, user: User | None, password: str) -> bool:
        """Check a sign-in password (equal work for an unknown user: ``user`` None).

        On success, a hash made with older argon2 parameters is replaced by one with the current
        parameters (the only moment the clear password is at hand).
        """
        stored = user.password_hash if user is not None else None
        ok = await asyncio.to_thread(self.hashing.verify, stored, password)
        if ok and user is not None and stored is not None and self.hashing.needs_rehash(stored):
            new_hash = await self.hash_password(password)
            async with self._sessions() as s, s.begin():
                row = await s.get(User, user.id)
                # Only if nobody changed the password in between.
                if row is not None and row.password_hash == stored:
                    row.password_hash = new_hash
        return ok

    async def record_login(self, user_id: int) -> None:
        """A successful sign-in: ``last_login_at`` now.

        The lockout fields stay as they are: ``lockout_count`` must survive the owner's sign-ins
        between two attacks, or the progressive doubling would start over each time (idp.guard).
        """
        async with self._sessions() as s, s.begin():
            user = await self._user_by_id(s, user_id)
            user.last_login_at = self._now()

    async def record_lockout(self, user_id: int, *, until: datetime) -> int:
        """An automatic lockout until ``until``; returns the number of lockouts so far."""
        async with self._sessions() as s, s.begin():
            user = await self._user_by_id(s, user_id)
            user.locked_until = until.astimezone(UTC)  # SQLite keeps the wall time: make it UTC
            user.lockout_count = (user.lockout_count or 0) + 1
            return user.lockout_count

    async def clear_lockout(self, user_id: int, *, reset_count: bool = False) -> None:
        """End an automatic lockout now (``reset_count`` also forgets earlier lockouts)."""
        async with self._sessions() as s, s.begin():
            user = await self._user_by_id(s, user_id)
            user.locked_until = None
            if reset_count:
                user.lockout_count = 0

    # -- groups ---------------------------------------------------------------------------

    async def ensure_group(self, name: str, description: str | None = None) -> Group:
        """The group named ``name``, created when missing (its description is kept if it exists)."""
        group_name = normalise_code("group name", name)
        try:
            async with self._sessions() as s, s.begin():
                group: Group | None = (
                    await s.execute(select(Group).where(Group.name == group_name))
                ).scalar_one_or_none()
                if group is None:
                    group = Group(name=group_name, description=description)
                    s.add(group)
                return group
        except IntegrityError:  # created concurrently: read the winner
            async with self._sessions() as s:
                return await self._group(s, group_name)

    async def get_group(self, name: str) -> Group | None:
        async with self._sessions() as s:
            group: Group | None = (
                await s.execute(select(Group).where(Group.name == name.strip().lower()))
            ).scalar_one_or_none()
            return group

    async def list_groups(self) -> list[GroupSummary]:
        query = (
            select(Group.name, Group.description, func.count(Membership.id))
            .outerjoin(Membership, Membership.group_id == Group.id)
            .group_by(Group.id, Group.name, Group.description)
            .order_by(Group.name)
        )
        async with self._sessions() as s:
            return [
                GroupSummary(name, description, count) for name, description, count in await s.execute(query)
            ]

    async def add_member(self, group: str, username: str) -> bool:
        """Put a user in a group; False when already a member."""
        async with self._sessions() as s, s.begin():
            g = await self._group(s, group)
            user = await self._user(s, username)
            existing = await s.execute(
                select(Membership.id).where(Membership.group_id == g.id, Membership.user_id == user.id)
            )
            if existing.first() is not None:
                return False
            s.add(Membership(user_id=user.id, group_id=g.id))
            return True

    async def remove_member(self, group: str, username: str) -> bool:
        """Take a user out of a group; False when not a member."""
        async with self._sessions() as s, s.begin():
            g = await self._group(s, group)
            user = await self._user(s, username)
            membership: Membership | None = (
                await s.execute(
                    select(Membership).where(Membership.group_id == g.id, Membership.user_id == user.id)
                )
            ).scalar_one_or_none()
            if membership is None:
                return False
            await s.delete(membership)
            return True

    async def members(self, group: str) -> list[User]:
        async with self._sessions() as s:
            g = await self._group(s, group)
            rows = await s.execute(
                select(User)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.group_id == g.id)
                .order_by(User.username)
            )
            return list(rows.scalars())

    async def groups_of(self, username: str) -> list[str]:
        async with self._sessions() as s:
            rows = await s.execute(
                select(Group.name)
                .join(Membership, Membership.group_id == Group.id)
                .join(User, User.id == Membership.user_id)
                .where(User.username == username.strip().lower())
                .order_by(Group.name)
            )
            return list(rows.scalars())

    async def mfa_required_by_group(self, user_id: int) -> bool:
        """Whether a group of the user requires a second factor (``groups.mfa_required``)."""
        async with self._sessions() as s:
            found = await s.execute(
                select(Group.id)
                .join(Membership, Membership.group_id == Group.id)
                .where(Membership.user_id == user_id, Group.mfa_required.is_(True))
                .limit(1)
            )
            return found.first() is not None

    async def set_group_mfa_required(self, name: str, required: bool) -> Group:
        """Require (or stop requiring) a second factor of the group's members."""
        async with self._sessions() as s, s.begin():
            group = await self._group(s, name)
            group.mfa_required = required
            return group

    async def set_mfa_enrol_required(self, username: str, required: bool) -> User:
        """Ask the user to set up a second factor at their next sign-in (or withdraw the request)."""
        async with self._sessions() as s, s.begin():
            user = await self._user(s, username)
            user.mfa_enrol_required = required
            return user

    async def clear_mfa_enrol_required(self, user_id: int) -> None:
        """The user has enrolled a factor: the administrator's request is met."""
        async with self._sessions() as s, s.begin():
            await s.execute(update(User).where(User.id == user_id).values(mfa_enrol_required=False))

    # -- departments ----------------------------------------------------------------------

    async def add_department(
        self, code: str, name: str, *, parent: str | None = None, name_en: str | None = None
    ) -> Department:
        """A new department under ``parent`` (a code), or at the top of the tree."""
        dept_code = normalise_code("department code", code)
        dept_name = clean_display_name(name)
        try:
            async with self._sessions() as s, s.begin():
                if (await s.execute(select(Department.id).where(Department.code == dept_code))).first():
                    raise DepartmentExists(dept_code)
                parent_id = (await self._department(s, parent)).id if parent else None
                department = Department(
                    code=dept_code,
                    name=dept_name,
                    name_en=clean_display_name(name_en) if name_en else None,
                    parent_id=parent_id,
                )
                s.add(department)
                return department
        except IntegrityError as e:
            raise DepartmentExists(dept_code) from e

    async def get_department(self, code: str) -> Department | None:
        async with self._sessions() as s:
            department: Department | None = (
                await s.execute(select(Department).where(Department.code == code.strip().lower()))
            ).scalar_one_or_none()
            return department

    async def departments(self) -> list[Department]:
        async with self._sessions() as s:
            return list((await s.execute(select(Department).order_by(Department.code))).scalars())

    async def department_tree(self) -> tuple[DepartmentNode, ...]:
        """Every department as a forest of top-level nodes (one query; the tree is small)."""
        rows = await self.departments()
        children: dict[int | None, list[Department]] = {}
        for row in rows:
            children.setdefault(row.parent_id, []).append(row)

        def build(parent_id: int | None, seen: frozenset[int]) -> tuple[DepartmentNode, ...]:
            return tuple(
                DepartmentNode(d.code, d.name, d.name_en, build(d.id, seen | {d.id}))
                for d in children.get(parent_id, [])
                if d.id not in seen  # a cycle written behind our back must not recurse forever
            )

        return build(None, frozenset())

    async def department_chain(self, code: str) -> tuple[str, ...]:
        """``code`` and the codes above it, nearest first (what access policies match on)."""
        query = select(Department.id, Department.code, Department.parent_id)
        async with self._sessions() as s:
            rows = {row.id: row for row in (await s.execute(query)).all()}
        by_code = {row.code: row for row in rows.values()}
        node = by_code.get(code)
        chain: list[str] = []
        while node is not None and len(chain) <= len(rows):
            chain.append(node.code)
            node = rows.get(node.parent_id) if node.parent_id is not None else None
        return tuple(chain)

    async def department_path(self, code: str, *, separator: str = " / ") -> str:
        """The names from the top of the tree down: "市政府 / 市人力资源和社会保障局"."""
        rows = {d.id: d for d in await self.departments()}
        by_code = {d.code: d for d in rows.values()}
        department = by_code.get(code.strip().lower())
        if department is None:
            raise UnknownDepartment(code)
        names: list[str] = []
        node: Department | None = department
        while node is not None and len(names) <= len(rows):
            names.append(node.name)
            node = rows.get(node.parent_id) if node.parent_id is not None else None
        return separator.join(reversed(names))
