"""`--share-cores`: the decode worker runs on the prefill worker's cores too, but never while a
prompt is computed or waits for them; and the flags that cannot share cores say why."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.shared_cores import BORROWER, LENDER, SharedCores, SharedCoresError
from services.up import UpError, components, worker_roles
from services.up import build_parser as up_parser
from services.worker import UsageError, build_parser, settings_from_args


class Threads:
    """Stands in for torch.set_num_threads, so each test sees what the worker would set."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)


def pair(path: Path) -> tuple[SharedCores, SharedCores, Threads]:
    threads = Threads()
    prefill = SharedCores(str(path), LENDER, 1, 1, Threads())
    decode = SharedCores(str(path), BORROWER, 1, 1, threads)
    return prefill, decode, threads


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_the_decode_worker_borrows_the_cores_while_no_prompt_is_computed(tmp_path) -> None:
    prefill, decode, threads = pair(tmp_path / "pair-0")
    with decode.step() as n:
        assert n == 2
    with prefill.step() as n:
        assert n == 1
        with decode.step() as m:
            assert m == 1  # the prompt's step holds them: the decode step runs on its own core
    with decode.step() as n:
        assert n == 2
    assert threads.calls == [2, 1, 2]  # set only when the count changes


def test_a_waiting_prompt_gets_the_cores_after_one_decode_step(tmp_path) -> None:
    prefill, decode, _ = pair(tmp_path / "pair-0")
    entered = threading.Event()
    release = threading.Event()

    def prompt_step() -> None:
        with prefill.step():
            entered.set()
            release.wait(10)

    with decode.step() as n:
        assert n == 2
        worker = threading.Thread(target=prompt_step)
        worker.start()
        wait_until(lambda: prefill.waiting, "the prefill worker to say it waits")
        assert not entered.is_set()  # the decode step in flight keeps them
    assert entered.wait(10)
    with decode.step() as n:
        assert n == 1
    release.set()
    worker.join(10)
    with decode.step() as n:
        assert n == 2


def test_with_prompts_queued_the_prefill_worker_takes_every_core_and_decoding_waits(
    tmp_path,
) -> None:
    prefill, decode, _ = pair(tmp_path / "pair-0")
    decoded = threading.Event()
    threads_of_decode: list[int] = []

    def decode_step() -> None:
        with decode.step() as n:
            threads_of_decode.append(n)
            decoded.set()

    with prefill.step(wide=True) as n:
        assert n == 2
        worker = threading.Thread(target=decode_step)
        worker.start()
        assert not decoded.wait(0.2)  # decoding pauses while the wide prompt step runs
    worker.join(10)
    assert threads_of_decode == [2]  # and then gets both cores back
    with prefill.step() as n:
        assert n == 1  # no queue: the prefill worker keeps to its own cores


def test_a_wide_step_waits_for_the_decode_step_in_flight(tmp_path) -> None:
    prefill, decode, _ = pair(tmp_path / "pair-0")
    entered = threading.Event()

    def wide_step() -> None:
        with prefill.step(wide=True):
            entered.set()

    with decode.step() as n:
        assert n == 2
        worker = threading.Thread(target=wide_step)
        worker.start()
        wait_until(lambda: prefill.waiting, "the prefill worker to say it waits")
        assert not entered.is_set()
    worker.join(10)
    assert entered.is_set()


def test_a_waiting_prompt_stops_the_decode_worker_from_taking_them_again(tmp_path) -> None:
    _, decode, _ = pair(tmp_path / "pair-0")
    decode._flags[0] = 1  # what a prefill worker blocked on the lock has written
    with decode.step() as n:
        assert n == 1


def test_the_cores_come_back_when_the_prefill_worker_dies_holding_them(tmp_path) -> None:
    path = tmp_path / "pair-0"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from services.shared_cores import SharedCores\n"
         f"cores = SharedCores({str(path)!r}, 'prefill', 1, 1, lambda n: None)\n"
         "with cores.step():\n"
         "    print('held', flush=True)\n"
         "    time.sleep(600)\n"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        _, decode, _ = pair(path)
        with decode.step() as n:
            assert n == 1
    finally:
        holder.kill()
        holder.wait()
    with decode.step() as n:
        assert n == 2  # the kernel dropped the dead process's lock


def test_an_unopenable_file_and_a_colocated_worker_are_refused(tmp_path) -> None:
    with pytest.raises(SharedCoresError, match="cannot open the shared-cores file .*missing"):
        SharedCores(str(tmp_path / "missing" / "pair-0"), LENDER, 1, 1, Threads())
    with pytest.raises(SharedCoresError, match="a both worker cannot share its cores"):
        SharedCores(str(tmp_path / "pair-0"), "both", 1, 1, Threads())


def test_the_worker_flags_that_cannot_share_cores_say_why() -> None:
    def settings(role: str, *argv: str):
        return settings_from_args(build_parser("pdserve worker", role).parse_args(argv), role)

    assert settings("decode", "--share-cores", "/tmp/p", "--threads", "1").share_cores == "/tmp/p"
    with pytest.raises(UsageError, match="colocated"):
        settings("both", "--share-cores", "/tmp/p", "--threads", "1")
    with pytest.raises(UsageError, match="needs --threads"):
        settings("prefill", "--share-cores", "/tmp/p")
    with pytest.raises(UsageError, match="without tensor parallelism"):
        settings("decode", "--share-cores", "/tmp/p", "--threads", "1", "--device", "cuda")


def test_up_pairs_prefill_i_with_decode_i_and_refuses_what_it_cannot_pair(tmp_path) -> None:
    args = up_parser().parse_args(["--prefill", "2", "--decode", "2", "--share-cores"])
    workers = [c for c in components(args, "redis://127.0.0.1:1/0", "t", "tcp", tmp_path)
               if c.name != "router"]  # fmt: skip
    files = {w.name: w.command[w.command.index("--share-cores") + 1] for w in workers}
    assert files == {
        "prefill-0": str(tmp_path / "pair-0"), "prefill-1": str(tmp_path / "pair-1"),
        "decode-0": str(tmp_path / "pair-0"), "decode-1": str(tmp_path / "pair-1"),
    }  # fmt: skip
    for argv, message in (
        (["--prefill", "1", "--decode", "2"], "the same count .*got 1 and 2"),
        (["--both", "1"], "colocated"),
        (["--tensor-parallel-size", "2"], "tensor parallelism"),
    ):
        with pytest.raises(UpError, match=message):
            worker_roles(up_parser().parse_args([*argv, "--share-cores"]))
