"""Benchmarks run each measurement in a fresh process, so none inherits another's threads or
caches; the child hands its figures back as one `RESULT {json}` line on stdout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

PREFIX = "RESULT "
ROOT = Path(__file__).resolve().parent.parent


def emit(result: dict) -> None:
    """Print the child's result line (call it once, last)."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(cmd: list[str], what: str, *, stdin: str | None = None,
              env: dict | None = None) -> dict:
    """Run `cmd` and return the result it emitted; fail with the end of its stderr if none."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT, env=env,
                          check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
