"""Helpers for the worker-side tests: real worker processes (`python -m services.cli worker`)
started in parallel on free ports, the offline reference, and polling with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import torch

from services.engine.llm import LLM
from services.engine.sampling_params import SamplingParams

REPO = Path(__file__).resolve().parents[2]
TOKEN = "worker-tests-internal-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# SmolLM2 loads in ~5 s alone; several processes loading on two busy cores take far longer.
LOAD_TIMEOUT = 240.0
PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea and the wind, in the style of an old sailor's song:",
    "List three prime numbers.",
    " ".join(["Once upon a time, in a land far away, there lived a curious fox."] * 8),
]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def reference_tokens(llm: LLM, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Offline greedy output, computed with one thread like the workers."""
    with torch_threads(1):
        return [c.token_ids for c in llm.generate(prompts, greedy(max_tokens))]


def sampling_json(max_tokens: int) -> dict[str, object]:
    return {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}


@dataclass
class Worker:
    """A worker process started by the tests, and how to reach it."""

    role: str
    worker_id: str
    proc: subprocess.Popen
    log_path: Path
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def metric(self, name: str) -> float:
        """One `pdserve:` gauge or counter from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"pdserve:{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"pdserve:{name} not in /metrics:\n{text}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no deregistration, no cleanup."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.dump_and_kill()
        return self.proc.returncode

    def dump_and_kill(self) -> None:
        """A worker that did not stop: SIGABRT first, so faulthandler (enabled by every
        `pdserve` command) writes each thread's stack to the log, then SIGKILL."""
        self.proc.send_signal(signal.SIGABRT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


def stop_all(*workers: Worker) -> list[int]:
    """SIGTERM every worker at once, then wait for each; their exit codes."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    return [w.stop() for w in workers]


def spawn_worker(
    role: str, worker_id: str, registry_url: str, log_dir: Path, *extra: str
) -> Worker:
    """Start `pdserve worker` on free ports (returns at once; see `wait_ready`)."""
    command = [
        sys.executable, "-m", "services.cli", "worker", "--role", role,
        "--host", "127.0.0.1", "--port", "0", "--kv-port", "0",
        "--advertise-host", "127.0.0.1", "--registry", registry_url,
        "--worker-id", worker_id, "--dtype", "float32", "--threads", "1",
        "--kv-cache-memory", "0.05", *extra,
    ]  # fmt: skip
    log_path = log_dir / f"{worker_id}.log"
    env = os.environ | {"PDSERVE_INTERNAL_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return Worker(role, worker_id, proc, log_path)


def wait_ready(registry_url: str, *workers: Worker) -> None:
    """Poll the registry until every worker has registered (they do so once they serve)."""
    client = redis.Redis.from_url(registry_url)
    deadline = time.monotonic() + LOAD_TIMEOUT
    try:
        while not all(w.url for w in workers):
            for w in workers:
                if w.proc.poll() is not None:
                    raise AssertionError(f"{w.worker_id} exited early:\n{w.log()}")
                record = client.get(f"pdserve:worker:{w.worker_id}")
                if record is not None:
                    w.url = json.loads(record)["url"]
            if time.monotonic() > deadline:
                late = next(w for w in workers if not w.url)
                raise AssertionError(f"{late.worker_id} never registered:\n{late.log()}")
            time.sleep(0.1)
    finally:
        client.close()


def start_workers(
    registry_url: str, log_dir: Path, specs: list[tuple[str, str, list[str]]]
) -> list[Worker]:
    """Start (role, worker_id, extra flags) workers together and wait until all serve."""
    workers = [spawn_worker(role, wid, registry_url, log_dir, *extra) for role, wid, extra in specs]
    try:
        wait_ready(registry_url, *workers)
    except BaseException:
        for w in workers:
            w.kill()
        raise
    return workers


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
