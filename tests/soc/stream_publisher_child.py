"""A producer that publishes until killed: ``python -m tests.soc.stream_publisher_child URL PREFIX``.

Events go through an event bus to a :class:`core.eventstream.StreamPublisher`, as in the gateway.
Each batch's ids are printed, one line per batch, once ``publish`` returned — once Redis has
them, the producer's acknowledgement."""

from __future__ import annotations

import asyncio
import sys

from core.events import Category, Event, Outcome
from core.eventstream import StreamPublisher


async def main(url: str, prefix: str) -> None:
    publisher = StreamPublisher(url, prefix=prefix)
    n = 0
    while True:
        batch = []
        for _ in range(20):
            n += 1
            batch.append(
                Event(
                    action="sign-in",
                    category=Category.AUTHENTICATION,
                    outcome=Outcome.FAILURE,
                    fields={"user.name": f"user{n % 7}", "labels.n": str(n)},
                )
            )
        await publisher.publish(batch)
        print(" ".join(e.id for e in batch), flush=True)
        await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
