"""`pdserve decode`: a worker that pulls prompt KV from prefill workers and generates tokens."""

from __future__ import annotations

from services.worker import main as worker_main


def main(argv: list[str]) -> int:
    return worker_main(argv, role="decode", prog="pdserve decode")
