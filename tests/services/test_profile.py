"""`pdserve profile` measures the engine and writes a profile the planner loads."""

from __future__ import annotations

import json

from planner.fitted_profile import load_profile
from services.profile import main
from tests.engine.conftest import write_tiny_checkpoint


def test_profile_writes_a_profile_the_planner_reads(tmp_path, capsys):
    model = write_tiny_checkpoint(tmp_path / "tiny", max_position_embeddings=4096)
    out = tmp_path / "profile.json"
    raw = tmp_path / "raw.json"
    rc = main(
        [
            "--model",
            str(model),
            "--name",
            "tiny",
            "--quick",
            "--dtype",
            "float32",
            "--kv-cache-memory",
            "0.05",
            "--out",
            str(out),
            "--measurements",
            str(raw),
        ]
    )
    assert rc == 0
    assert "prefill fit" in capsys.readouterr().out
    rows = json.loads(raw.read_text())
    assert rows["prefill"] and rows["decode"]
    assert all(r["ms"] > 0 for r in rows["prefill"] + rows["decode"])
    entry = json.loads(out.read_text())["tiny"]["1"]
    assert entry["kv_capacity_tokens"] > 0 and entry["source"] == "pdserve profile"
    assert load_profile(out, ["tiny"]) is not None


def test_profile_reports_a_bad_model_without_traceback(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
