"""A process that appends to a spool until it is killed; tests/soc/test_spool.py runs it.

``python -m tests.soc.spool_child append DIR FIRST_ID SEED`` appends batches of 1 to 1,000
documents whose ``event.id`` counts up from FIRST_ID, and prints ``ack FIRST LAST`` (flushed) only
after each append has returned. ``consume`` does the same and also, concurrently, reads and commits
what was appended, printing ``committing ID`` before each commit and ``committed ID`` after it (ID
being the batch's last). The parent kills it with SIGKILL.

``python -m tests.soc.spool_child fsize DIR`` appends under a file-size limit (``RLIMIT_FSIZE``,
with ``SIGXFSZ`` ignored so the write fails with EFBIG instead of killing the process) until an
append fails halfway, then appends one small document, and prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from soc.spool import Spool, SpoolError

PADDING = "x" * 480


def document(n: int) -> dict[str, Any]:
    """A document of about 600 bytes whose ``event.id`` sorts as its number does."""
    return {
        "@timestamp": "2026-11-02T09:00:00.000000Z",
        "event.id": f"{n:012d}",
        "event.kind": "event",
        "event.action": "sign-in",
        "user.name": "zhangwei",
        "source.ip": "10.20.1.5",
        "message": PADDING,
    }


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def append_forever(spool: Spool, first: int, rng: random.Random) -> None:
    n = first
    while True:
        size = rng.choice((1, rng.randint(2, 100), rng.randint(100, 1000)))
        await spool.append([document(i) for i in range(n, n + size)])
        say(f"ack {n} {n + size - 1}")
        n += size


async def consume_forever(spool: Spool, rng: random.Random) -> None:
    while True:
        await spool.wait_for_data(1.0)
        batch = await spool.read(rng.randint(1, 700))
        if batch is None:
            continue
        last = batch.documents[-1]["event.id"]
        say(f"committing {int(last)}")
        await spool.commit(batch)
        say(f"committed {int(last)}")


async def run(mode: str, directory: str, first: int, seed: int) -> None:
    rng = random.Random(seed)
    async with Spool(directory, max_bytes=256 * 1024 * 1024, segment_bytes=2 * 1024 * 1024) as spool:
        say("open")
        tasks = [append_forever(spool, first, rng)]
        if mode == "consume":
            tasks.append(consume_forever(spool, random.Random(seed + 1)))
        await asyncio.gather(*tasks)


def only_segment(directory: str) -> Path:
    (segment,) = Path(directory).glob("*.seg")
    return segment


async def fill(directory: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    async with Spool(directory, max_bytes=64 * 1024 * 1024, segment_bytes=64 * 1024 * 1024) as spool:
        segment = only_segment(directory)
        await spool.append([document(i) for i in range(5)])
        frame = segment.stat().st_size
        # Room for three more such appends and half of a fourth: that one is cut short by the kernel.
        limit = 4 * frame + frame // 2
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        report: dict[str, Any] = {"acked": 5}
        while True:
            size_before = segment.stat().st_size
            try:
                await spool.append([document(i) for i in range(report["acked"], report["acked"] + 5)])
            except SpoolError as e:
                report["error"] = str(e)
                break
            report["acked"] += 5
        report["size_before"] = size_before
        report["size_after"] = segment.stat().st_size
        try:
            await spool.append([{"@timestamp": "2026-11-02T09:00:00Z", "event.id": "small"}])
            report["small"] = "acked"
        except SpoolError as e:
            report["small"] = str(e)
    say(json.dumps(report))


def main(argv: list[str]) -> None:
    mode, directory = argv[0], argv[1]
    if mode == "fsize":
        asyncio.run(fill(directory))
    elif mode in ("append", "consume"):
        asyncio.run(run(mode, directory, int(argv[2]), int(argv[3])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
