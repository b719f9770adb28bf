"""`pdserve up` as a user runs it: a real process tree (Redis, workers, router), real HTTP,
real signals; afterwards not one of its processes may be left."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from worker_processes import REPO

READY_TIMEOUT = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children in their own sessions included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited while we looked
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class UpProcess:
    """`python -m services.cli up ...` with its output collected line by line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", *args],
            cwd=REPO,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, fragment: str, timeout: float = READY_TIMEOUT) -> str:
        """The first output line containing ``fragment`` (fails if up exits first)."""
        deadline = time.monotonic() + timeout
        seen = next((line for line in self.lines if fragment in line), None)
        while seen is None:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {fragment!r} in time:\n{self.output()}") from None
            if line is None:
                raise AssertionError(f"up exited before {fragment!r}:\n{self.output()}")
            if fragment in line:
                seen = line
        return seen

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def finish(self, timeout: float = 90.0) -> int:
        code = self.proc.wait(timeout)
        while self._new.get() is not None:  # the reader has drained every line
            pass
        return code

    def kill(self) -> None:
        for pid in descendants(self.proc.pid) | {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_up() -> Iterator:
    started: list[UpProcess] = []

    def start(*args: str) -> UpProcess:
        up = UpProcess(*args)
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.kill()
            up.proc.wait()


def common(port: int) -> list[str]:
    return ["--port", str(port), "--host", "127.0.0.1", "--kv-backend", "tcp",
            "--dtype", "float32", "--kv-cache-memory", "0.05", "--threads", "1"]  # fmt: skip


def ask_capital(base: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 20,
        "temperature": 0,
    }
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_up_serves_disaggregated_and_sigterm_leaves_no_process(start_up) -> None:
    port = free_port()
    up = start_up(*common(port))
    ready = up.wait_for("[up] ready")
    assert f"http://127.0.0.1:{port}/v1" in ready
    for component in ("prefill-0", "decode-0", "router"):
        assert any(line.startswith(f"[{component}] ") for line in up.lines), up.output()
    tree = descendants(up.proc.pid)
    assert len(tree) >= 4  # redis-server, two workers, the router

    answer = ask_capital(f"http://127.0.0.1:{port}")
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]

    up.proc.send_signal(signal.SIGTERM)
    assert up.finish() == 0, up.output()
    assert up.lines[-1] == "[up] stopped"
    assert not [pid for pid in tree if alive(pid)]


def test_up_colocated_with_an_api_key_and_ctrl_c_leaves_no_process(start_up, tmp_path) -> None:
    port = free_port()
    steps = tmp_path / "steps"
    up = start_up(
        *common(port), "--both", "1", "--api-key", "open-sesame", "--step-log-dir", str(steps)
    )
    up.wait_for("[up] ready")
    assert any(line.startswith("[both-0] ") for line in up.lines), up.output()
    tree = descendants(up.proc.pid)
    base = f"http://127.0.0.1:{port}"
    assert ask_capital(base).status_code == 401
    answer = ask_capital(base, {"Authorization": "Bearer open-sesame"})
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
    logged = [json.loads(line) for line in (steps / "both-0.jsonl").read_text().splitlines()]
    assert any(s["prefill_tokens"] for s in logged) and any(s["decode_tokens"] for s in logged)

    up.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert up.finish() == 0, up.output()
    assert not [pid for pid in tree if alive(pid)]


def test_up_with_shared_cores_decodes_on_the_prefill_workers_core_too(start_up, tmp_path) -> None:
    port = free_port()
    steps = tmp_path / "steps"
    up = start_up(*common(port), "--share-cores", "--step-log-dir", str(steps))
    assert "decode borrowing idle prefill cores" in up.wait_for("[up] starting")
    up.wait_for("[up] ready")
    answer = ask_capital(f"http://127.0.0.1:{port}")
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]

    def logged(name: str) -> list[dict]:
        return [json.loads(line) for line in (steps / f"{name}.jsonl").read_text().splitlines()]

    prefill, decode = logged("prefill-0"), logged("decode-0")
    assert prefill and all(s["threads"] == 1 for s in prefill), prefill
    # One request: its prompt was done before its KV was pulled, so no decode step had to
    # leave the prefill worker's core alone.
    assert decode and all(s["threads"] == 2 for s in decode), decode
    up.proc.send_signal(signal.SIGTERM)
    assert up.finish() == 0, up.output()


def test_components_die_with_up_even_when_it_is_killed(start_up) -> None:
    """SIGKILL gives up no chance to clean up: the kernel tells its children (PDEATHSIG)."""
    up = start_up(*common(free_port()), "--both", "1")
    up.wait_for("[up] ready")
    tree = descendants(up.proc.pid)
    assert len(tree) >= 3  # redis-server, the worker, the router
    up.proc.kill()
    up.proc.wait()
    deadline = time.monotonic() + 60
    while [pid for pid in tree if alive(pid)]:
        assert time.monotonic() < deadline, f"still running: {[p for p in tree if alive(p)]}"
        time.sleep(0.1)


def test_a_worker_that_fails_to_start_stops_up_with_its_error(start_up) -> None:
    up = start_up(*common(free_port()), "--model", "/no/such/model")
    assert up.finish() == 1, up.output()
    error = next(line for line in up.lines if line.startswith("pdserve up: error:"))
    assert "exited with code" in error and "/no/such/model" in error
    assert up.lines[-1] == "[up] stopped"
    redis_address = up.wait_for("[up] redis on").rsplit("redis://", 1)[1].removesuffix("/0")
    # Everything it started is gone: workers and router (by their flags), and redis-server.
    assert not processes_mentioning("/no/such/model")
    assert not processes_mentioning(redis_address)


def test_a_busy_port_fails_before_anything_starts(start_up) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = start_up(*common(port))
        assert up.finish() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in up.output()
    assert not any(line.startswith("[up] redis") for line in up.lines)
