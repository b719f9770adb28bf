"""`pdserve plan` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from planner.cli import main
from planner.fit import fit, write_profile
from planner.fitted_profile import Coefficients, FittedTiming
from planner.measurements import DecodeRow, Measurements, PrefillRow

WORKLOAD = "synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2"
QUICK = ["--num-requests", "60", "--max-num-seqs", "64", "--workers", "1"]
OPT13B = ["--model", "facebook/opt-13b", "--gpu", "a100-80g-sxm", "--nodes", "1",
          "--gpus-per-node", "4", "--workload", WORKLOAD, "--network-gbps", "25"]
PDSERVE = Path(sys.executable).parent / "pdserve"


def test_plan_prints_a_table_and_writes_values_and_json(tmp_path, capsys):
    values, plan = tmp_path / "values.yaml", tmp_path / "plan.json"
    status = main([*OPT13B, "--ttft", "0.25", "--tpot", "0.1", *QUICK,
                   "--deployment", "disaggregated", "--out", str(values), "--json", str(plan)])
    out = capsys.readouterr().out
    assert status == 0
    assert "goodput/GPU" in out and "baseline" in out and "Best: P " in out
    data = json.loads(plan.read_text())
    written = yaml.safe_load(values.read_text())
    assert written["prefill"]["replicas"] == data["prefill"]["replicas"]
    assert written["decode"]["tensorParallelSize"] == data["decode"]["tp"]
    assert written["placement"]["affinity"] == data["placement"]["affinity"]
    assert data["latency_model"].startswith("profile")  # auto picked DistServe's A100 fit
    assert data["gpus"] <= 4 and data["slo"] == {"ttft": 0.25, "tpot": 0.1, "attainment": 0.9}


def test_plan_recommends_and_writes_colocated_workers_when_they_serve_more(tmp_path, capsys):
    # DistServe's chatbot SLOs on four A100s: chunked-prefill workers doing both phases win.
    values, plan = tmp_path / "values.yaml", tmp_path / "plan.json"
    status = main([*OPT13B, "--ttft", "0.25", "--tpot", "0.1", *QUICK,
                   "--out", str(values), "--json", str(plan)])
    out = capsys.readouterr().out
    assert status == 0
    assert "Best: colocated" in out and "Recommended over the best disaggregated plan" in out
    data = json.loads(plan.read_text())
    assert data["deployment"] == "colocated"
    written = yaml.safe_load(values.read_text())
    assert written["prefill"] == {"replicas": 0} and written["decode"] == {"replicas": 0}
    pool = data["recommended"]["colocated"]
    assert written["colocated"]["replicas"] == pool["replicas"]
    assert written["colocated"]["tensorParallelSize"] == pool["tp"]
    assert "placement" not in written


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "opt-13b", "--gpu", "v100"], "unknown GPU 'v100'"),
    (["--model", "opt-14b", "--gpu", "a100"], "unknown model 'opt-14b'"),
    (["--model", "opt-175b", "--gpu", "a100", "--gpus-per-node", "2"],
     "fits no configuration"),
    (["--model", "opt-13b", "--gpu", "a100", "--gpus-per-node", "4", "--ttft", "0.02"],
     "no prefill configuration meets TTFT 0.02 s"),
    (["--model", "opt-13b", "--gpu", "a100", "--gpus-per-node", "4", "--rate", "5000"],
     "needs at least"),
    (["--model", "opt-13b", "--gpu", "a100", "--workload", "synthetic:in=5"], "needs in=MEAN"),
    (["--model", "opt-13b", "--gpu", "a100", "--max-pp", "2", "--out", "v.yaml"],
     "pipelineParallelSize 1 only"),
    (["--model", "opt-13b", "--gpu", "l4", "--latency-model", "distserve"],
     "measured on a100-80g-sxm"),
])
def test_bad_input_is_one_clear_line(capsys, args, message):
    defaults = {"--workload": WORKLOAD, "--ttft": "0.25", "--tpot": "0.1"}
    for flag, value in defaults.items():
        if flag not in args:
            args = [*args, flag, value]
    assert main([*args, *QUICK]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdserve plan: error: ")
    assert message in err[0]


def test_malformed_flags_exit_through_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*OPT13B, "--ttft", "-1", "--tpot", "0.1"])
    assert exit_info.value.code == 2
    assert "--ttft: must be positive" in capsys.readouterr().err


def _cpu_profile(tmp_path: Path) -> Path:
    """What `pdserve profile` would write for a slow CPU engine: 0.5 ms per prompt token,
    30 ms per decode step, a 60,000-token KV pool."""
    truth = FittedTiming(Coefficients((5.0, 0.5, 1e-5), (30.0, 0.001, 2.0),
                                      (30.0, 0.001, 2.0), 95), 1)
    rng = np.random.default_rng(0)
    prefill = [PrefillRow([n] * k, truth.prefill_ms(n * k, n * n * k) * rng.normal(1, 0.01))
               for n in (32, 128, 512) for k in (1, 2, 4)]
    decode = [DecodeRow(b, b * c, truth.decode_ms(b, b * c) * rng.normal(1, 0.01))
              for b in (1, 4, 16, 32) for c in (64, 256, 1024)]
    measurements = Measurements("smollm2", "bfloat16", "cpu", 1, 1, prefill, decode, 60000)
    profile = tmp_path / "cpu-profile.json"
    write_profile(profile, measurements, fit(measurements))
    return profile


def test_profile_from_pdserve_profile_plans_a_cpu_deployment(tmp_path, capsys):
    profile = _cpu_profile(tmp_path)
    status = main(["--model", "smollm2", "--gpu", "cpu", "--nodes", "1", "--gpus-per-node", "2",
                   "--workload", "synthetic:in=200,out=50", "--ttft", "2", "--tpot", "0.2",
                   "--latency-model", str(profile), "--predict-at", "0.5,4,30", *QUICK,
                   "--json", str(tmp_path / "plan.json")])
    out = capsys.readouterr().out
    assert status == 0
    data = json.loads((tmp_path / "plan.json").read_text())
    assert (data["prefill"]["replicas"], data["decode"]["replicas"]) == (1, 1)
    assert data["prefill"]["kv_capacity_tokens"] == 60000
    lines = [line for line in out.splitlines() if line.startswith("  at ")]
    attainments = [float(line.split(":")[1].split("%")[0]) for line in lines]
    assert len(attainments) == 3 and attainments == sorted(attainments, reverse=True)
    assert attainments[0] > 90 and attainments[-1] < 50  # 30 req/s is past the knee


def test_pdserve_dispatches_plan():
    done = subprocess.run([str(PDSERVE), "plan", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert "--max-pp" in done.stdout and "no pipeline parallelism yet" in done.stdout
    failed = subprocess.run([str(PDSERVE), "plan", "--model", "opt-13b", "--gpu", "tpu-v5",
                             "--workload", WORKLOAD, "--ttft", "1", "--tpot", "1"],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and "unknown GPU 'tpu-v5'" in failed.stderr


def test_a_trace_is_predicted_as_sent_once(tmp_path, capsys):
    # The load generator's trace format; 25 requests, so a once-through prediction's
    # attainment is a whole number of 25ths.
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": 0.37 * i * (1 + i % 3), "input_length": 200,
                                         "output_length": 50}) + "\n" for i in range(25)))
    status = main(["--model", "smollm2", "--gpu", "cpu", "--nodes", "1", "--gpus-per-node", "2",
                   "--workload", str(trace), "--ttft", "2", "--tpot", "0.2",
                   "--latency-model", str(_cpu_profile(tmp_path)), "--predict-at", "0.5,40",
                   "--deployment", "disaggregated",  # one prefill + one decode, as measured
                   *QUICK, "--json", str(tmp_path / "plan.json")])
    out = capsys.readouterr().out
    assert status == 0
    assert "the trace's 25 requests sent once" in out
    predicted = json.loads((tmp_path / "plan.json").read_text())["predicted_at"]
    assert [p["rate"] for p in predicted] == [0.5, 40]
    assert predicted[0]["attainment"] == 1.0  # far apart: every request alone
    assert predicted[1]["attainment"] < 1.0  # squeezed 80-fold: prompts queue
    assert all(abs(p["attainment"] * 25 - round(p["attainment"] * 25)) < 1e-9 for p in predicted)


def test_two_cores_are_compared_as_whole_instances(tmp_path, capsys):
    # In DistServe's measure (prefill and decode in their ideal ratio) disaggregation edges
    # ahead here, but two cores hold one prefill and one decode instance, not the ideal mix,
    # and as planned the two colocated instances serve more.
    status = main(["--model", "smollm2", "--gpu", "cpu", "--nodes", "1", "--gpus-per-node", "2",
                   "--max-tp", "1", "--workload", "synthetic:in=256,out=64,dist=fixed",
                   "--ttft", "1", "--tpot", "0.1", "--latency-model", str(_cpu_profile(tmp_path)),
                   "--num-requests", "60", "--workers", "1", "--json", str(tmp_path / "plan.json")])
    assert status == 0
    assert "as planned, in whole instances" in capsys.readouterr().out
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["deployment"] == "colocated"
    assert data["goodput_per_gpu"] >= data["colocated_goodput_per_gpu"]  # the ideal ratio
    chosen = data["recommended"]
    assert chosen["capacity"] / chosen["gpus"] > data["capacity"] / data["gpus"]


def test_one_gpu_gets_a_colocated_plan_from_a_profile_filed_under_the_short_name(tmp_path,
                                                                                  capsys):
    # `pdserve profile` files the built-in model as "smollm2"; planning it by its Hugging Face
    # id finds that entry. One GPU holds no prefill + decode pair, so colocated is the plan.
    values = tmp_path / "values.yaml"
    status = main(["--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--gpu", "cpu",
                   "--nodes", "1", "--gpus-per-node", "1", "--workload",
                   "synthetic:in=256,out=64,dist=fixed", "--ttft", "1", "--tpot", "0.1",
                   "--latency-model", str(_cpu_profile(tmp_path)), "--predict-at", "0.5",
                   *QUICK, "--json", str(tmp_path / "plan.json"), "--out", str(values)])
    out = capsys.readouterr().out
    assert status == 0
    assert "No disaggregated deployment fits this cluster" in out
    data = json.loads(values.with_name("plan.json").read_text())
    assert data["deployment"] == "colocated" and data["prefill"] is None
    assert data["recommended"]["gpus"] == 1 and data["recommended"]["capacity"] > 0
    assert data["predicted_at"][0]["attainment"] > 0.9
    written = yaml.safe_load(values.read_text())
    assert written["colocated"]["replicas"] == 1 and written["prefill"]["replicas"] == 0


def test_one_gpu_cannot_be_planned_disaggregated(tmp_path, capsys):
    status = main(["--model", "smollm2", "--gpu", "cpu", "--nodes", "1", "--gpus-per-node", "1",
                   "--workload", "synthetic:in=256,out=64,dist=fixed", "--ttft", "1",
                   "--tpot", "0.1", "--latency-model", str(_cpu_profile(tmp_path)),
                   "--deployment", "disaggregated", *QUICK])
    assert status == 1
    assert "needs at least one prefill and one decode instance" in capsys.readouterr().err
