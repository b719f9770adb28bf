"""`pdserve profile` measures the engine and writes a profile the planner loads."""

from __future__ import annotations

import json

from planner.fitted_profile import Coefficients, FittedTiming, load_profile
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


def test_serving_profile_fits_decode_to_what_the_deployment_streams(tmp_path, scripted_url,
                                                                    capsys):
    # The deployment here is the load generator's scripted OpenAI server (a stand-in that
    # answers every request with its first token at 80 ms and one token every 25 ms, whatever
    # the load), so the decode fit must come out near 25 ms at any batch, far from the tiny
    # engine's own step.
    model = write_tiny_checkpoint(tmp_path / "tiny", max_position_embeddings=4096)
    out = tmp_path / "profile.json"
    rc = main(["--model", str(model), "--name", "tiny", "--quick", "--dtype", "float32",
               "--kv-cache-memory", "0.05", "--out", str(out), "--serving", scripted_url,
               "--serving-model", "steady"])
    assert rc == 0, capsys.readouterr().err
    assert "first-token overhead" in capsys.readouterr().out
    entry = json.loads(out.read_text())["tiny"]["1"]
    assert entry["source"] == "pdserve profile --serving"
    serving = entry["serving"]
    assert {p["concurrency"] for p in serving["points"]} == {1, 2, 4}
    timing = load_profile(out, ["tiny"]).timing(1, 1)
    for batch in (1, 4):
        assert 24 < timing.decode_ms(batch, batch * 300) < 32
    assert timing.decode_ms(1, 300) > 2 * FittedTiming(
        Coefficients.from_json(serving["engine_only"], "engine"), 1).decode_ms(1, 300)
    assert 60 < serving["first_token_overhead_ms"] < 100
    assert entry["prefill"][0] > serving["first_token_overhead_ms"]


def test_serving_profile_of_an_unreachable_deployment_is_one_clear_error(tmp_path, free_url,
                                                                         scripted_url, capsys):
    model = write_tiny_checkpoint(tmp_path / "tiny", max_position_embeddings=4096)
    capsys.readouterr()
    for url, served, message in (
        (free_url, None, f"cannot reach {free_url}"),
        ("localhost:8000", None, "URL must start with http://"),
        (scripted_url, "nope", f"{scripted_url} does not serve model 'nope' (it serves steady"),
    ):
        rc = main(["--model", str(model), "--quick", "--dtype", "float32", "--kv-cache-memory",
                   "0.05", "--out", str(tmp_path / "p.json"), "--serving", url,
                   *(["--serving-model", served] if served else [])])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err
        assert err.count("\n") == 1  # refused before the engine grid, in one line
    assert not (tmp_path / "p.json").exists()
