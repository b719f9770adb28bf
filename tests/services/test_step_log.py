"""The step log: one JSON line per step, and a log that fails never stops the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.engine.engine import StepResult
from services.step_log import StepLog, StepLogError


def test_each_step_is_one_json_line(tmp_path: Path) -> None:
    log = StepLog(tmp_path / "steps.jsonl")
    log.write(StepResult([], [], num_prefill_tokens=256, num_decode_tokens=3, seconds=0.08))
    log.write(StepResult([], [], num_decode_tokens=4, seconds=0.02, num_joined=1, threads=2))
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [
        (x["prefill_tokens"], x["decode_tokens"], x["joined"], x["seconds"], x["threads"])
        for x in lines
    ] == [(256, 3, 0, 0.08, 0), (0, 4, 1, 0.02, 2)]
    assert lines[0]["end"] <= lines[1]["end"]


def test_an_unwritable_path_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(StepLogError, match="cannot write the step log .*missing"):
        StepLog(tmp_path / "missing" / "steps.jsonl")


def test_a_full_disk_drops_the_log_instead_of_raising(caplog) -> None:
    log = StepLog("/dev/full")  # every write fails with ENOSPC
    step = StepResult([], [], num_decode_tokens=1, seconds=0.01)
    for _ in range(3):
        log.write(step)  # must not raise into the engine thread
    assert sum("step log /dev/full dropped" in r.message for r in caplog.records) == 1
