"""Starting helper processes that never outlive the process that started them.

Each child gets its own process group (so a signal reaches it and everything it forks) and,
on Linux, asks the kernel for SIGTERM when its parent dies, so even a parent killed with
SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: ask for SIGTERM when the parent exits (no-op off Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_kwargs() -> dict[str, object]:
    """Keyword arguments for Popen / create_subprocess_exec: own process group, tied to us."""
    return {"start_new_session": True, "preexec_fn": die_with_parent}


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``, ignoring one already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM the child's group, wait up to ``timeout`` s, then SIGKILL; return its exit code."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children the process forked and left behind in its group go too.
    signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode
