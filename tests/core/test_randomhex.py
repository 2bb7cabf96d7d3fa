"""core.randomhex: random hex ids from blocks, none repeated, none shared with a forked child."""

from __future__ import annotations

import os
import threading

import pytest

from core.events import new_event_id
from core.randomhex import RandomHex


def test_ids_have_their_width_and_do_not_repeat_across_blocks() -> None:
    source = RandomHex(16, per_read=8)
    ids = [source() for _ in range(1000)]  # 125 blocks
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    with pytest.raises(ValueError, match="even"):
        RandomHex(15)


def test_threads_taking_ids_at_once_get_distinct_ones() -> None:
    source = RandomHex(20, per_read=4)
    taken: list[list[str]] = [[] for _ in range(8)]

    def take(mine: list[str]) -> None:
        mine.extend(source() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for mine in taken for i in mine]
    assert len(everything) == 16_000 and len(set(everything)) == 16_000


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    source = RandomHex(16)
    source()  # the parent holds a block now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(source() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(source() for _ in range(10))
    assert len(child) == 160 and child != parent
    ids = {child[i : i + 16] for i in range(0, 160, 16)} | {parent[i : i + 16] for i in range(0, 160, 16)}
    assert len(ids) == 20


def test_event_ids_keep_their_time_order_prefix_and_random_tail() -> None:
    first, second = new_event_id(), new_event_id()
    assert len(first) == len(second) == 32 and first != second
    assert first[:12] <= second[:12]  # milliseconds of the epoch
