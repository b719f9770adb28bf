"""How much load can `pdserve bench` generate before its own cost shows in what it measures?

A minimal server in a separate process (raw asyncio, pre-built SSE bytes) sends the first token
the moment a request arrives and then one token per stream every --itl seconds, so every
millisecond of TTFT above the network's own is the client's. The client (loadgen's runner and
streaming client, exactly as `pdserve bench run` uses them) sends requests at a constant rate
that keeps C streams open; the table shows TTFT and delivered tokens/s as C grows, and the
last C whose median TTFT stays within 1 ms of the lowest level's.

    .venv/bin/python bench/loadgen_overhead.py
    .venv/bin/python bench/loadgen_overhead.py --levels 1,64,512 --tokens 50 --itl 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np

from loadgen.arrivals import Arrivals
from loadgen.client import Endpoint, StreamClient
from loadgen.runner import raise_open_file_limit, run
from loadgen.workload import Request

# --- the server --------------------------------------------------------------------------------


def _chunk(event: bytes) -> bytes:
    """One SSE event in HTTP/1.1 chunked framing."""
    payload = b"data: " + event + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)


HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
# Shaped like vLLM's completion chunks, so the client parses what it would in real use.
TOKEN = _chunk(json.dumps({
    "id": "cmpl-overhead", "object": "text_completion", "created": 0, "model": "overhead",
    "choices": [{"index": 0, "text": " tok", "logprobs": None, "finish_reason": None,
                 "stop_reason": None}]}).encode())


def _tail(tokens: int) -> bytes:
    usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
    event = {"id": "cmpl-overhead", "object": "text_completion", "created": 0,
             "model": "overhead", "choices": [], "usage": usage}
    return _chunk(json.dumps(event).encode()) + _chunk(b"[DONE]") + b"0\r\n\r\n"


def serve(tokens: int, itl: float) -> None:
    """Serve forever on a free port (printed on stdout): every POST streams `tokens` tokens."""
    raise_open_file_limit()
    tail = _tail(tokens)
    streams: list[list] = []  # [transport, tokens sent]

    class Connection(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                length = 0
                if at >= 0:
                    stop = head.find(b"\r\n", at)
                    length = int(head[at + 15 : stop if stop >= 0 else None])
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                self.transport.write(HEAD + TOKEN)
                streams.append([self.transport, 1])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Connection, "127.0.0.1", 0, backlog=8192)
        print(server.sockets[0].getsockname()[1], flush=True)
        next_tick = loop.time()
        while True:
            # One tick writes the next token of every open stream, like one decode step.
            next_tick += itl
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            alive = []
            for stream in streams:
                transport, sent = stream
                if transport.is_closing():
                    continue
                if sent + 1 == tokens:
                    transport.write(TOKEN + tail)
                    continue
                transport.write(TOKEN)
                stream[1] = sent + 1
                alive.append(stream)
            streams[:] = alive

    asyncio.run(main())


# --- the client --------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def level(url: str, streams: int, tokens: int, itl: float, seconds: float,
                min_requests: int, server_pid: int) -> dict:
    """One load level: a constant rate that keeps `streams` streams open."""
    lifetime = (tokens - 1) * itl
    rate = streams / lifetime
    n = max(min_requests, round(rate * seconds))
    requests = [Request("hello", 1, tokens)] * n
    times = Arrivals(rate, "constant").times(n, seed=0)
    cpu, server_cpu = time.process_time(), _cpu_seconds(server_pid)
    async with StreamClient(Endpoint(url, "overhead", timeout=60)) as client:
        records, duration = await run(client, requests, times=times, progress=False)
    cpu, server_cpu = time.process_time() - cpu, _cpu_seconds(server_pid) - server_cpu
    # Steady state only: skip the ramp-up while the first streams are still opening.
    steady = [r for r in records if r.success and r.send_time >= lifetime]
    ttft = np.array([r.ttft for r in steady]) * 1000
    begin, end = min(r.send_time for r in steady), max(r.send_time for r in steady)
    span = end - begin
    # Streams open on average between the first and the last steady send.
    open_time = sum(
        max(0.0, min(end, r.send_time + r.latency) - max(begin, r.send_time))
        for r in records if r.success
    )
    return {
        "streams": streams,
        "open": open_time / span,
        "tok_s": sum(r.output_len for r in steady) / span,
        "median": float(np.median(ttft)),
        "p90": float(np.percentile(ttft, 90)),
        "p99": float(np.percentile(ttft, 99)),
        "itl": float(np.mean([g for r in steady for g in r.itl])) * 1000,
        "failed": sum(not r.success for r in records),
        "client_cpu": cpu / duration,
        "us_per_token": cpu / sum(r.output_len for r in records if r.success) * 1e6,
        "server_cpu": server_cpu / duration,
        "requests": n,
    }


async def measure(args: argparse.Namespace, url: str, server_pid: int) -> list[dict]:
    """Every level in order, stopping once TTFT is far past the 1 ms budget."""
    # A first request pays for the HTTP stack's lazy imports; keep it out of the baseline.
    async with StreamClient(Endpoint(url, "overhead")) as client:
        await client.send(Request("warm up", 1, 2))
    rows: list[dict] = []
    for streams in args.levels:
        row = await level(url, streams, args.tokens, args.itl, args.seconds, args.min_requests,
                          server_pid)
        rows.append(row)
        print(_format(row, rows[0]["median"]), flush=True)
        if row["median"] > rows[0]["median"] + 100 or row["failed"]:
            break
    return rows


HEADER = (f"{'streams':>8}{'open':>8}{'tokens/s':>11}{'TTFT p50':>10}{'p90':>8}{'p99':>8}"
          f"{'+p50':>8}{'ITL':>7}{'failed':>8}{'client':>8}{'us/tok':>8}{'server':>8}")


def _format(row: dict, baseline: float) -> str:
    return (f"{row['streams']:>8}{row['open']:>8.0f}{row['tok_s']:>11.0f}{row['median']:>10.2f}"
            f"{row['p90']:>8.2f}{row['p99']:>8.2f}{row['median'] - baseline:>8.2f}"
            f"{row['itl']:>7.1f}{row['failed']:>8}{row['client_cpu']:>8.0%}"
            f"{row['us_per_token']:>8.1f}{row['server_cpu']:>8.0%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16,64,128,256,384,512,768,1024,2048,4096",
                        type=lambda s: [int(x) for x in s.split(",")],
                        help="concurrent streams to try, in order")
    parser.add_argument("--tokens", type=int, default=26, help="tokens per stream")
    parser.add_argument("--itl", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of sending a level")
    parser.add_argument("--min-requests", type=int, default=40, help="requests a level at least")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.tokens, args.itl)
        return 0
    raise_open_file_limit()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--tokens", str(args.tokens), "--itl", str(args.itl)],
        stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        print(f"streams of {args.tokens} tokens, one every {args.itl * 1000:g} ms; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print("TTFT and ITL in ms; +p50 is the rise over the first level; client and server "
              "CPU in shares of one core; us/tok is client CPU per token delivered")
        print(HEADER)
        rows = asyncio.run(measure(args, url, server.pid))
    finally:
        server.terminate()
        server.wait()
    baseline = rows[0]["median"]
    best = rows[0]
    for row in rows:
        if row["median"] > baseline + 1.0 or row["failed"]:
            break
        best = row
    print(f"\nsustained within 1 ms of the baseline median TTFT ({baseline:.2f} ms): "
          f"{best['open']:.0f} open streams, {best['tok_s']:.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
