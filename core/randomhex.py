"""Random hex strings read from the operating system a block at a time.

Request ids and event ids are made for every request the gateway proxies; a ``getrandom`` system
call each costs more than the rest of making the id. :class:`RandomHex` reads 256 ids' worth at
once and hands them out one by one. A forked child starts with none, so it never repeats its
parent's.
"""

from __future__ import annotations

import os
import weakref

__all__ = ["RandomHex"]

_ALL: weakref.WeakSet[RandomHex] = weakref.WeakSet()


class RandomHex:
    """``digits`` random hex digits a call (``digits`` even), from blocks of ``per_read``."""

    def __init__(self, digits: int, per_read: int = 256) -> None:
        if digits <= 0 or digits % 2:
            raise ValueError("digits must be a positive even number")
        self._digits = digits
        self._per_read = per_read
        self._ids: list[str] = []
        _ALL.add(self)

    def __call__(self) -> str:
        ids = self._ids
        while True:
            try:
                return ids.pop()
            except IndexError:  # none left (or another thread took the last one): read a block
                digits = self._digits
                block = os.urandom(digits // 2 * self._per_read).hex()
                ids.extend([block[i : i + digits] for i in range(0, len(block), digits)])

    def clear(self) -> None:
        self._ids.clear()


def _forget_all() -> None:
    for source in list(_ALL):
        source.clear()


os.register_at_fork(after_in_child=_forget_all)
