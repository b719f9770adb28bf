"""`--kv-backend auto`: UCX on a GPU with ucxx, TCP on a CPU host, and both CLIs default to it."""

from __future__ import annotations

import torch

from services.kv_backend_choice import resolve_kv_backend
from services.worker import build_parser, settings_from_args


def test_an_explicit_backend_is_kept_on_any_device() -> None:
    for device in ("auto", "cpu", "cuda"):
        assert resolve_kv_backend("ucx", device) == "ucx"
        assert resolve_kv_backend("tcp", device) == "tcp"


def test_auto_is_tcp_on_a_cpu_and_ucx_on_a_gpu() -> None:
    # ucxx is installed in the project's environment, so a CUDA device gets UCX.
    assert resolve_kv_backend("auto", "cpu") == "tcp"
    assert resolve_kv_backend("auto", "cuda") == "ucx"


def test_auto_follows_the_device_this_host_has() -> None:
    expected = "ucx" if torch.cuda.is_available() else "tcp"
    assert resolve_kv_backend("auto", "auto") == expected


def test_a_worker_started_without_the_flag_uses_the_hosts_choice() -> None:
    args = build_parser("pdserve worker", "decode").parse_args(["--model", "smollm2"])
    assert args.kv_backend == "auto"
    assert settings_from_args(args, "decode").kv_backend == resolve_kv_backend("auto", "auto")
    cpu = build_parser("pdserve worker", "decode").parse_args(["--device", "cpu"])
    assert settings_from_args(cpu, "decode").kv_backend == "tcp"


def test_up_resolves_auto_once_and_gives_every_worker_the_result() -> None:
    from services.up import build_parser as up_parser
    from services.up import components

    args = up_parser().parse_args(["--prefill", "2", "--decode", "2"])
    assert args.kv_backend == "auto"
    resolved = resolve_kv_backend(args.kv_backend, "auto")
    workers = [c for c in components(args, "redis://127.0.0.1:1/0", "token", resolved)
               if c.name != "router"]
    assert len(workers) == 4
    for worker in workers:
        flag = worker.command.index("--kv-backend")
        assert worker.command[flag + 1] == resolved != "auto"
