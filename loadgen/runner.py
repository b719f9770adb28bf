"""One benchmark run: release requests on a schedule (open loop) or at a fixed concurrency
(closed loop), and collect what each one measured."""

from __future__ import annotations

import asyncio
import resource
import sys
from time import perf_counter

from tqdm import tqdm

from loadgen.client import StreamClient
from loadgen.metrics import RequestRecord
from loadgen.workload import Request


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every open stream is a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(
    client: StreamClient,
    requests: list[Request],
    *,
    times: list[float] | None = None,
    concurrency: int | None = None,
    progress: bool = True,
    desc: str = "requests",
) -> tuple[list[RequestRecord], float]:
    """Send `requests` at `times` (seconds from the start) or `concurrency` at a time.

    Returns the records in request order and the duration from the first send to the last
    reply.
    """
    if (times is None) == (concurrency is None):
        raise ValueError("give exactly one of times and concurrency")
    if times is not None and len(times) != len(requests):
        raise ValueError(f"{len(times)} send times for {len(requests)} requests")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1 (got {concurrency})")
    raise_open_file_limit()
    records: list[RequestRecord] = [None] * len(requests)  # type: ignore[list-item]
    with tqdm(
        total=len(requests), desc=desc, unit="req", file=sys.stderr, disable=not progress,
        mininterval=0.5, dynamic_ncols=True,
    ) as bar:
        t0 = perf_counter()

        async def send(i: int) -> None:
            records[i] = await client.send(requests[i], t0)
            bar.update()

        if times is not None:
            tasks = []
            for i, at in enumerate(times):
                delay = t0 + at - perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(i)))
            await asyncio.gather(*tasks)
        else:
            queue = iter(range(len(requests)))

            async def worker() -> None:
                for i in queue:
                    await send(i)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
        duration = perf_counter() - t0
    return records, duration
