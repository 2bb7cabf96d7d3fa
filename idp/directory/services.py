"""Directory operations on the SQL tables."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from idp.directory.models import Group, Membership, User

__all__ = ["Directory"]


class Directory:
    """Users and groups. Every method runs in a transaction of its own."""

    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def get_user(self, username: str) -> User | None:
        async with self._sessions() as s:
            user: User | None = (
                await s.execute(select(User).where(User.username == username))
            ).scalar_one_or_none()
            return user

    async def ensure_group(self, name: str, description: str | None = None) -> Group:
        async with self._sessions() as s, s.begin():
            group: Group | None = (
                await s.execute(select(Group).where(Group.name == name))
            ).scalar_one_or_none()
            if group is None:
                group = Group(name=name, description=description)
                s.add(group)
            return group

    async def add_user(
        self,
        *,
        username: str,
        display_name: str,
        password_hash: str | None,
        groups: tuple[str, ...] = (),
        must_change_password: bool = False,
        email: str | None = None,
    ) -> User:
        async with self._sessions() as s, s.begin():
            user = User(
                sub=secrets.token_hex(16),  # opaque and stable: never derived from the username
                username=username,
                display_name=display_name,
                password_hash=password_hash,
                must_change_password=must_change_password,
                email=email,
            )
            s.add(user)
            await s.flush()
            for name in groups:
                group = (await s.execute(select(Group).where(Group.name == name))).scalar_one()
                s.add(Membership(user_id=user.id, group_id=group.id))
            return user

    async def groups_of(self, username: str) -> list[str]:
        async with self._sessions() as s:
            rows = await s.execute(
                select(Group.name)
                .join(Membership, Membership.group_id == Group.id)
                .join(User, User.id == Membership.user_id)
                .where(User.username == username)
                .order_by(Group.name)
            )
            return list(rows.scalars())
