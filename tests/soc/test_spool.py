"""The ingest spool (soc.spool): order, capacity, reopening, recovery from torn writes and crashes.

Every test works in its own temporary directory. The crash tests run tests/soc/spool_child.py as a
real process and kill it with SIGKILL at a random moment; the write-failure test makes the kernel
refuse a write (``RLIMIT_FSIZE``) in such a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from soc.spool import Batch, Position, Spool, SpoolCorrupt, SpoolError, SpoolFull
from tests.soc.spool_child import document

ROOT = Path(__file__).resolve().parents[2]
MAX_BATCH = 1000  # the child's largest batch


def ids(batch: Batch) -> list[int]:
    return [int(d["event.id"]) for d in batch.documents]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


async def drain(spool: Spool, chunk: int) -> list[int]:
    """Read and commit everything, ``chunk`` documents at a time."""
    got: list[int] = []
    while (batch := await spool.read(chunk)) is not None:
        got += ids(batch)
        await spool.commit(batch)
    return got


async def append_range(spool: Spool, first: int, count: int) -> None:
    assert await spool.append([document(i) for i in range(first, first + count)]) == count


async def frame_of(directory: Path, count: int) -> bytes:
    """The bytes one append of ``count`` documents puts on disk (written in a scratch spool)."""
    async with Spool(directory, max_bytes=10**8) as spool:
        await append_range(spool, 500, count)
    (segment,) = segments(directory)
    return segment.read_bytes()


# -- order, reading, committing -------------------------------------------------------------------


async def test_documents_come_back_in_order_across_many_segments(tmp_path: Path) -> None:
    rng = random.Random(1)
    sent: list[int] = []
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=8192) as spool:
        for _ in range(60):
            size = rng.randint(1, 20)
            await append_range(spool, len(sent), size)
            sent += range(len(sent), len(sent) + size)
        assert len(segments(tmp_path)) > 10
        assert spool.backlog_documents == len(sent)
        first = await spool.read(1)
        assert first is not None
        assert first.documents == (document(0),)
        assert await drain(spool, 7) == sent
        assert (spool.backlog_documents, spool.backlog_bytes) == (0, 0)
        assert await spool.read(10) is None
        assert len(segments(tmp_path)) == 1  # every consumed segment is deleted


async def test_concurrent_appends_keep_the_order_they_were_made_in(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        done = await asyncio.gather(*(spool.append([document(i)]) for i in range(300)))
        assert done == [1] * 300
        assert await drain(spool, 1000) == list(range(300))


async def test_a_batch_larger_than_the_read_buffer_is_read_in_parts(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**8) as spool:
        await append_range(spool, 0, 1)
        await append_range(spool, 1, 2500)  # about 1.6 MB in one frame
        await append_range(spool, 2501, 1)
        sizes = []
        got: list[int] = []
        while (batch := await spool.read(1000)) is not None:
            sizes.append(len(batch.documents))
            got += ids(batch)
            await spool.commit(batch)
        assert sizes == [1000, 1000, 502]
        assert got == list(range(2502))


async def test_what_is_not_committed_is_read_again(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        await append_range(spool, 0, 10)
        first = await spool.read(4)
        again = await spool.read(4)
        assert first == again
        assert first is not None
        assert ids(first) == [0, 1, 2, 3]
        assert first.end == Position(first.start.segment, first.start.offset, 4)  # inside the batch
        await spool.commit(first)
        with pytest.raises(ValueError, match="committed already"):
            await spool.commit(first)
        rest = await spool.read(100)
        assert rest is not None
        assert ids(rest) == [4, 5, 6, 7, 8, 9]
        assert rest.start == first.end


async def test_an_append_whose_caller_stops_waiting_is_still_written_in_order(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        first = asyncio.create_task(spool.append([document(0)]))
        second = asyncio.create_task(spool.append([document(1)]))
        await asyncio.sleep(0)  # one turn of the loop: both have queued their frames
        first.cancel()
        assert await second == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await drain(spool, 10) == [0, 1]


async def test_wait_for_data_wakes_on_append_and_on_close(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**7)
    await spool.open()
    assert await spool.wait_for_data(0.01) is False
    waiter = asyncio.create_task(spool.wait_for_data(30))
    await asyncio.sleep(0)
    assert not waiter.done()
    await append_range(spool, 0, 1)
    assert await asyncio.wait_for(waiter, 5) is True
    assert await spool.wait_for_data(0) is True
    assert await drain(spool, 10) == [0]
    assert await spool.wait_for_data(0.01) is False
    waiter = asyncio.create_task(spool.wait_for_data(None))
    await asyncio.sleep(0)
    assert not waiter.done()  # consumed: nothing to wake up for
    await spool.close()
    assert await asyncio.wait_for(waiter, 5) is False


# -- reopening ------------------------------------------------------------------------------------


async def test_reopening_resumes_exactly_at_the_committed_position(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=4096) as spool:
        for k in range(20):
            await append_range(spool, k * 10, 10)
        batch = await spool.read(35)
        assert batch is not None
        assert batch.end.skip == 5  # half of the fourth append is consumed
        await spool.commit(batch)
        uncommitted = await spool.read(20)
        assert uncommitted is not None
        gauges = (spool.backlog_documents, spool.backlog_bytes)
        assert gauges[0] == 165
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=4096) as spool:
        assert (spool.backlog_documents, spool.backlog_bytes) == gauges
        again = await spool.read(20)
        assert again is not None
        assert ids(again) == ids(uncommitted) == list(range(35, 55))
        await append_range(spool, 200, 5)
        assert await drain(spool, 50) == list(range(35, 205))
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=4096) as spool:
        assert spool.backlog_documents == 0
        assert await spool.read(1) is None


async def test_a_consumed_segment_left_behind_by_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=4096) as spool:
        for k in range(10):
            await append_range(spool, k * 4, 4)
        oldest = segments(tmp_path)[0]
        saved = oldest.read_bytes()
        batch = await spool.read(12)  # the whole first segment (two appends) and one more append
        assert batch is not None
        await spool.commit(batch)
        assert not oldest.exists()
    oldest.write_bytes(saved)  # as if the crash came between the checkpoint and the deletion
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=4096) as spool:
        assert not oldest.exists()
        assert await drain(spool, 100) == list(range(12, 40))


async def test_a_directory_is_held_by_one_open_spool(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7):
        with pytest.raises(SpoolError, match="already open"):
            await Spool(tmp_path, max_bytes=10**7).open()
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        assert spool.backlog_documents == 0


async def test_the_spool_directory_and_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=10**7) as spool:
        await append_range(spool, 0, 1)
        batch = await spool.read(1)
        assert batch is not None
        await spool.commit(batch)
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


# -- capacity and gauges --------------------------------------------------------------------------


async def test_a_full_spool_refuses_a_batch_and_writes_none_of_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=5000) as spool:
        n = 0
        with pytest.raises(SpoolFull, match="does not fit"):
            while True:
                await append_range(spool, n, 1)
                n += 1
        assert n == 5000 // len(await frame_of(tmp_path / "scratch", 1))
        sizes = [p.stat().st_size for p in segments(directory)]
        gauges = (spool.backlog_documents, spool.backlog_bytes)
        with pytest.raises(SpoolFull):
            await append_range(spool, n, 3)
        assert [p.stat().st_size for p in segments(directory)] == sizes
        assert (spool.backlog_documents, spool.backlog_bytes) == gauges
        assert spool.backlog_bytes <= 5000
        with pytest.raises(ValueError, match="more than the whole spool"):
            await append_range(spool, n, 20)
        batch = await spool.read(2)
        assert batch is not None
        await spool.commit(batch)
        await append_range(spool, n, 1)  # room again
    async with Spool(directory, max_bytes=5000) as spool:
        assert await drain(spool, 100) == list(range(2, n + 1))


async def test_gauges_follow_the_backlog(tmp_path: Path) -> None:
    one = len(await frame_of(tmp_path / "one", 1))
    four = len(await frame_of(tmp_path / "four", 4))
    spool = Spool(tmp_path / "spool", max_bytes=10 * one, filling_threshold=0.8)
    await spool.open()
    try:
        assert (spool.backlog_documents, spool.backlog_bytes, spool.fill_ratio, spool.filling) == (
            0,
            0,
            0,
            False,
        )
        for i in range(7):
            await append_range(spool, i, 1)
        assert (spool.backlog_documents, spool.backlog_bytes) == (7, 7 * one)
        assert spool.fill_ratio == pytest.approx(0.7)
        assert not spool.filling
        await append_range(spool, 7, 1)
        assert spool.fill_ratio == pytest.approx(0.8)
        assert spool.filling
        batch = await spool.read(8)
        assert batch is not None
        await spool.commit(batch)
        assert (spool.backlog_documents, spool.backlog_bytes, spool.filling) == (0, 0, False)
        await append_range(spool, 8, 4)
        batch = await spool.read(1)
        assert batch is not None
        await spool.commit(batch)
        # A partly consumed append still takes its whole space.
        assert (spool.backlog_documents, spool.backlog_bytes) == (3, four)
    finally:
        await spool.close()


# -- bad input ------------------------------------------------------------------------------------


async def test_bad_input_is_refused_clearly_and_writes_nothing(tmp_path: Path) -> None:
    circular: dict[str, object] = {}
    circular["self"] = circular
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        with pytest.raises(TypeError, match="document 1 is a str"):
            await spool.append([document(0), "not a mapping"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="sequence of mappings"):
            await spool.append("abc")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="document 1 cannot be written as JSON"):
            await spool.append([document(0), {"x": float("nan")}])
        with pytest.raises(ValueError, match="document 0 cannot be written as JSON"):
            await spool.append([{"x": object()}])
        with pytest.raises(ValueError, match="document 0 cannot be written as JSON"):
            await spool.append([circular])
        assert await spool.append([]) == 0
        assert spool.backlog_documents == 0
        assert [p.stat().st_size for p in segments(tmp_path)] == [0]
        with pytest.raises(ValueError, match="max_documents"):
            await spool.read(0)
    with pytest.raises(SpoolError, match="not open"):
        await spool.append([document(0)])
    with pytest.raises(SpoolError, match="not open"):
        await spool.read(1)
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path, max_bytes=0)
    with pytest.raises(ValueError, match="segment_bytes"):
        Spool(tmp_path, max_bytes=10, segment_bytes=-1)
    with pytest.raises(ValueError, match="filling_threshold"):
        Spool(tmp_path, max_bytes=10, filling_threshold=1.5)


# -- recovery -------------------------------------------------------------------------------------

TORN_TAILS: dict[str, Callable[[bytes], bytes]] = {
    "part of a header": lambda frame: frame[:7],
    "half a frame": lambda frame: frame[: len(frame) // 2],
    "a whole frame with a bad checksum": lambda frame: frame[:-3] + bytes([frame[-3] ^ 1]) + frame[-2:],
    "garbage": lambda frame: random.Random(7).randbytes(333),
    "zeros": lambda frame: bytes(4096),
}


@pytest.mark.parametrize("tail", TORN_TAILS)
async def test_a_torn_tail_is_cut_off_on_open(tmp_path: Path, tail: str) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=10**7) as spool:
        for k in range(3):
            await append_range(spool, k * 5, 5)
    (segment,) = segments(directory)
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(TORN_TAILS[tail](await frame_of(tmp_path / "scratch", 10)))
    async with Spool(directory, max_bytes=10**7) as spool:
        assert segment.stat().st_size == size
        assert spool.backlog_documents == 15
        await append_range(spool, 15, 1)
    async with Spool(directory, max_bytes=10**7) as spool:
        assert await drain(spool, 100) == list(range(16))


async def test_a_torn_first_frame_of_a_new_segment_is_cut_off(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=10**7, segment_bytes=1000) as spool:
        await append_range(spool, 0, 2)
        batch = await spool.read(2)
        assert batch is not None
        await spool.commit(batch)  # consumed to the very end
    (segment,) = segments(directory)
    torn = directory / f"{int(segment.stem) + 1:020d}.seg"
    torn.write_bytes((await frame_of(tmp_path / "scratch", 3))[:100])
    async with Spool(directory, max_bytes=10**7, segment_bytes=1000) as spool:
        assert torn.stat().st_size == 0
        assert spool.backlog_documents == 0
        await append_range(spool, 2, 1)
        assert await drain(spool, 10) == [2]


async def test_a_torn_frame_at_the_committed_position_is_cut_off(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=10**7) as spool:
        await append_range(spool, 0, 3)
        batch = await spool.read(3)
        assert batch is not None
        await spool.commit(batch)
    (segment,) = segments(directory)
    with segment.open("ab") as file:
        file.write((await frame_of(tmp_path / "scratch", 3))[:-10])
    async with Spool(directory, max_bytes=10**7) as spool:
        assert spool.backlog_documents == 0
        await append_range(spool, 3, 1)
        assert await drain(spool, 10) == [3]


DAMAGE: dict[str, Callable[[bytearray, int], None]] = {
    "payload": lambda data, at: data.__setitem__(at + 100, data[at + 100] ^ 1),
    "length": lambda data, at: data.__setitem__(at + 4, data[at + 4] ^ 0x40),
    "magic": lambda data, at: data.__setitem__(at, 0),
}


@pytest.mark.parametrize("damage", DAMAGE)
async def test_a_damaged_frame_followed_by_intact_ones_is_reported_not_skipped(
    tmp_path: Path, damage: str
) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        for k in range(5):
            await append_range(spool, k * 5, 5)
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    frame = len(data) // 5  # the five appends are the same size
    DAMAGE[damage](data, 2 * frame)
    segment.write_bytes(data)
    for _ in range(2):  # nothing is repaired: a second open fails the same way
        with pytest.raises(SpoolCorrupt) as info:
            await Spool(tmp_path, max_bytes=10**7).open()
        assert (info.value.path, info.value.offset) == (segment, 2 * frame)
        assert "intact frame follows" in str(info.value)
        assert segment.read_bytes() == data


async def test_a_damaged_last_frame_of_an_older_segment_is_reported(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=3000) as spool:
        for k in range(6):
            await append_range(spool, k * 3, 3)
    older = segments(tmp_path)[0]
    assert len(segments(tmp_path)) == 3
    data = bytearray(older.read_bytes())
    data[-5] ^= 1
    older.write_bytes(data)
    with pytest.raises(SpoolCorrupt) as info:
        await Spool(tmp_path, max_bytes=10**7, segment_bytes=3000).open()
    assert (info.value.path, info.value.offset) == (older, len(data) // 2)
    assert "checksum" in info.value.reason


async def test_damage_while_open_is_reported_when_read(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7, keep_recent=0) as spool:  # every read from disk
        for k in range(3):
            await append_range(spool, k * 5, 5)
        (segment,) = segments(tmp_path)
        frame = segment.stat().st_size // 3
        with segment.open("r+b") as file:
            file.seek(frame + 50)
            file.write(b"#")
        batch = await spool.read(5)
        assert batch is not None
        assert ids(batch) == [0, 1, 2, 3, 4]
        await spool.commit(batch)
        with pytest.raises(SpoolCorrupt) as info:
            await spool.read(5)
        assert (info.value.path, info.value.offset) == (segment, frame)


@pytest.mark.parametrize(
    "checkpoint",
    [
        b"{",
        b"[]",
        b'{"segment": 1, "offset": -4, "skip": 0}',
        b'{"segment": 1, "offset": true, "skip": 0}',
        b'{"segment": 1, "offset": 7, "skip": 0}',  # not where a frame starts
        b'{"segment": 1, "offset": 0, "skip": 9}',  # the frame holds 5
        b'{"segment": 1, "offset": 999999, "skip": 0}',
        b'{"segment": 9, "offset": 0, "skip": 0}',
    ],
)
async def test_a_bad_checkpoint_is_reported_and_no_data_is_touched(tmp_path: Path, checkpoint: bytes) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        await append_range(spool, 0, 5)
        await append_range(spool, 5, 5)
    (segment,) = segments(tmp_path)
    data = segment.read_bytes()
    assert segment.name == f"{1:020d}.seg"
    (tmp_path / "checkpoint").write_bytes(checkpoint)
    with pytest.raises(SpoolCorrupt):
        await Spool(tmp_path, max_bytes=10**7).open()
    assert segments(tmp_path) == [segment]
    assert segment.read_bytes() == data


async def test_a_missing_segment_is_reported(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=3000) as spool:
        for k in range(6):
            await append_range(spool, k * 3, 3)
    segments(tmp_path)[1].unlink()
    with pytest.raises(SpoolCorrupt, match="segments are missing"):
        await Spool(tmp_path, max_bytes=10**7, segment_bytes=3000).open()


async def test_a_half_written_checkpoint_file_is_ignored(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        await append_range(spool, 0, 4)
        batch = await spool.read(2)
        assert batch is not None
        await spool.commit(batch)
    (tmp_path / "checkpoint.tmp").write_bytes(b'{"segm')  # a crash during the next commit
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        assert await drain(spool, 10) == [2, 3]
    assert not (tmp_path / "checkpoint.tmp").exists()


# -- real processes -------------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.soc.spool_child", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_at_random(proc: subprocess.Popen[str], rng: random.Random) -> list[str]:
    """Let ``proc`` acknowledge a random number of appends, SIGKILL it, and return every whole
    line it printed (those still in the pipe too)."""
    guard = threading.Timer(60, proc.kill)  # a child that hangs fails the test instead of hanging it
    guard.start()
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        acks, wanted = 0, rng.randint(3, 40)
        for line in proc.stdout:
            lines.append(line)
            acks += line.startswith("ack ")
            if acks >= wanted:
                break
        os.kill(proc.pid, signal.SIGKILL)
        rest, errors = proc.communicate(timeout=60)
    finally:
        guard.cancel()
    assert proc.returncode == -signal.SIGKILL, errors
    lines += rest.splitlines(keepends=True)
    return [line.rstrip("\n") for line in lines if line.endswith("\n")]


async def read_all(directory: Path) -> list[int]:
    """Everything in the spool, in order, without committing it."""
    async with Spool(directory, max_bytes=256 * 1024 * 1024, segment_bytes=2 * 1024 * 1024) as spool:
        batch = await spool.read(10**7)
        return [] if batch is None else ids(batch)


async def test_sigkill_loses_no_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random()
    acked: list[tuple[int, int]] = []  # per round: first id, last acknowledged id
    for round_ in range(4):
        first = round_ * 10**9
        lines = kill_at_random(child("append", str(tmp_path), str(first), str(rng.randrange(10**6))), rng)
        acks = [tuple(map(int, line.split()[1:])) for line in lines if line.startswith("ack ")]
        assert acks, lines
        acked.append((first, acks[-1][1]))
    got = await read_all(tmp_path)
    assert got == sorted(set(got))  # in order, each once
    for first, last in acked:
        mine = [n for n in got if first <= n < first + 10**9]
        # Every acknowledged id is there; past it at most the one append that was under way.
        assert mine[: last - first + 1] == list(range(first, last + 1))
        assert mine == list(range(first, first + len(mine)))
        assert len(mine) - (last - first + 1) <= MAX_BATCH


async def test_sigkill_while_reading_and_committing_loses_nothing_and_keeps_commits(tmp_path: Path) -> None:
    rng = random.Random()
    acked: set[int] = set()
    last_acked: dict[int, int] = {}  # per round: first id -> last acknowledged id
    committed = -1  # every id up to this one is consumed for sure
    for round_ in range(4):
        first = round_ * 10**9
        lines = kill_at_random(child("consume", str(tmp_path), str(first), str(rng.randrange(10**6))), rng)
        in_flight: int | None = None
        for line in lines:
            word, *numbers = line.split()
            if word == "ack":
                acked.update(range(int(numbers[0]), int(numbers[1]) + 1))
                last_acked[first] = int(numbers[1])
            elif word == "committing":
                in_flight = int(numbers[0])
            elif word == "committed":
                committed, in_flight = int(numbers[0]), None
        assert first in last_acked, lines
        remaining = await read_all(tmp_path)
        assert remaining == sorted(set(remaining))
        assert not remaining or remaining[0] > committed, "a committed id came back"
        if in_flight is not None and not any(n <= in_flight for n in remaining):
            committed = in_flight  # the commit under way reached the disk
        assert {n for n in acked if n > committed} <= set(remaining), "an acknowledged id is lost"
        # Besides acknowledged ids, only each round's last append (never acknowledged) may be there.
        for n in set(remaining) - acked:
            start = n - n % 10**9
            assert last_acked[start] < n <= last_acked[start] + MAX_BATCH


def test_a_failed_write_is_cut_off_and_later_appends_succeed(tmp_path: Path) -> None:
    proc = child("fsize", str(tmp_path))
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    report = json.loads(out.splitlines()[-1])
    assert "File too large" in report["error"]
    assert report["acked"] >= 5
    assert report["size_after"] == report["size_before"]  # the half-written frame is gone
    assert report["small"] == "acked"

    async def check() -> list[str]:
        async with Spool(tmp_path, max_bytes=10**8) as spool:
            batch = await spool.read(10**6)
            assert batch is not None
            return [d["event.id"] for d in batch.documents]

    got = asyncio.run(check())
    assert got == [f"{i:012d}" for i in range(report["acked"])] + ["small"]


async def test_a_reader_that_keeps_up_reads_from_memory_the_same_documents(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    async with Spool(kept, max_bytes=10**7, segment_bytes=4096) as spool:
        originals = [{"event.id": f"m{n}", "tags": ["a"], "n": n} for n in range(40)]
        for n in range(0, 40, 8):
            await spool.append(originals[n : n + 8])
        originals[0]["n"] = -1  # the caller's later change
        originals[1]["tags"].append("b")
        first = await spool.read(13)
        assert first is not None
        assert [d["n"] for d in first.documents] == list(range(13))
        assert first.documents[1]["tags"] == ["a"]
        await spool.commit(first)
        rest = await spool.read(100)
        assert rest is not None and [d["n"] for d in rest.documents] == list(range(13, 40))
        # Not committed: the same again, from memory or disk alike.
        assert await spool.read(100) == rest
    # Reopened, everything after the commit comes from disk, identical.
    async with Spool(kept, max_bytes=10**7, segment_bytes=4096) as spool:
        again = await spool.read(100)
        assert again is not None and again.documents == rest.documents and again.end == rest.end


@pytest.mark.parametrize("keep_recent", [0, 10**7], ids=["from-disk", "from-memory"])
async def test_the_next_batch_can_be_read_before_the_one_before_is_committed(
    tmp_path: Path, keep_recent: int
) -> None:
    async with Spool(tmp_path, max_bytes=10**7, segment_bytes=4096, keep_recent=keep_recent) as spool:
        for first in range(0, 300, 30):
            await append_range(spool, first, 30)
        got: list[int] = []
        first_batch = await spool.read(45)
        assert first_batch is not None
        batches = [first_batch]
        while (following := await spool.read(45, after=batches[-1])) is not None:
            assert following.start == batches[-1].end or following.start.offset == 0
            batches.append(following)
        assert await spool.read(10, after=batches[-1]) is None  # nothing after the last yet
        for batch in batches:  # commits go in the order read
            got += ids(batch)
            assert list(batch.texts) == [json.dumps(d, separators=(",", ":")) for d in batch.documents]
            await spool.commit(batch)
            if batch is batches[0]:
                with pytest.raises(ValueError, match="committed already"):
                    await spool.read(10, after=batch)
        assert got == list(range(300)) and spool.backlog_documents == 0


async def test_handed_over_documents_are_kept_without_a_copy(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        mine = [document(1)]
        handed = [document(2)]
        await spool.append(mine)
        await spool.append(handed, handed_over=True)
        batch = await spool.read(10)
        assert batch is not None
        assert batch.documents[0] == mine[0] and batch.documents[0] is not mine[0]
        assert batch.documents[1] is handed[0]


async def test_normalised_documents_keep_any_text_through_disk_and_recovery(tmp_path: Path) -> None:
    # Handed-over (normalised) documents are written as UTF-8 JSON: non-ASCII text, escapes and
    # the frame magic's own bytes inside a value come back the same from memory, from disk and
    # after a torn tail is cut off behind them.
    directory = tmp_path / "spool"
    texts = ["王芳 登录失败", "§OGS\xa7OGS", 'quote " back\\slash', "line\nbreak\x00nul", "\u2028\u2029", "𝄞"]
    originals = [{"event.id": str(n), "message": text, "tags": [text]} for n, text in enumerate(texts)]
    async with Spool(directory, max_bytes=10**7) as spool:
        for document in originals:
            await spool.append([dict(document, tags=list(document["tags"]))], handed_over=True)
        held = await spool.read(100)
        assert held is not None and list(held.documents) == originals
        assert [json.loads(text) for text in held.texts] == originals
    (segment,) = segments(directory)
    assert "王芳".encode() in segment.read_bytes()  # not escaped: UTF-8 on disk
    with segment.open("ab") as file:
        file.write((await frame_of(tmp_path / "scratch", 4))[:-5])
    async with Spool(directory, max_bytes=10**7, keep_recent=0) as spool:
        assert spool.backlog_documents == len(texts)
        batch = await spool.read(100)
        assert batch is not None and list(batch.documents) == originals
        assert [json.loads(text) for text in batch.texts] == originals


async def test_a_handed_over_batch_that_orjson_cannot_write_is_written_by_the_standard_library(
    tmp_path: Path,
) -> None:
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        huge = {"event.id": "1", "n": 2**70}  # beyond 64 bits
        surrogate = {"event.id": "2", "message": "lone \udc80 surrogate"}
        await spool.append([huge, surrogate], handed_over=True)
    async with Spool(tmp_path, max_bytes=10**7) as spool:
        batch = await spool.read(10)
        assert batch is not None and list(batch.documents) == [huge, surrogate]
