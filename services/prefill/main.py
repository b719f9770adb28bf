"""`pdserve prefill`: a worker that computes prompts and leases their KV to decode workers."""

from __future__ import annotations

from services.worker import main as worker_main


def main(argv: list[str]) -> int:
    return worker_main(argv, role="prefill", prog="pdserve prefill")
