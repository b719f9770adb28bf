"""`pdserve bench`: runs, goodput, plots, and bad input handled as normal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.cli import main

PDSERVE = Path(sys.executable).with_name("pdserve")


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(PDSERVE), "bench", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_pdserve_bench_run_writes_a_result_and_plots_it(scripted_url: str, tmp_path: Path):
    out = tmp_path / "result.json"
    done = _bench("run", "--url", scripted_url + "/v1", "--model", "steady/cli", "--rate", "40",
                  "--num-prompts", "6", "--input-len", "16", "--output-len", "4",
                  "--slo-ttft", "0.5", "--slo-tpot", "0.1", "--out", str(out), "--label", "a")
    assert done.returncode == 0, done.stderr
    assert "Benchmark result: a" in done.stdout and "SLO attainment:" in done.stdout
    assert "Traceback" not in done.stderr
    data = json.loads(out.read_text())
    assert data["completed"] == 6 and data["failed"] == 0
    assert data["slo_attainment"] == 1.0 and data["request_rate"] == 40
    assert data["total_output_tokens"] == 24 and len(data["requests"]) == 6
    assert data["mean_ttft_ms"] >= 79  # steady sends its first token after 80 ms
    plotted = _bench("plot", str(out))
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.split() == [str(tmp_path / "result_latency_cdf.png")]


def test_goodput_command_reports_per_gpu(
    scripted_url: str, stats, tmp_path: Path, capsys
) -> None:
    # mixed: exactly half of all requests attain these SLOs at any rate, so every rate passes
    # a 40% target and the search stops at --max-rate with a note.
    out = tmp_path / "goodput.json"
    code = main(["goodput", "--url", scripted_url, "--model", "mixed/cli", "--num-prompts", "8",
                 "--output-len", "3", "--slo-ttft", "0.3", "--slo-tpot", "0.075",
                 "--attainment", "0.4", "--start-rate", "20", "--max-rate", "40", "--gpus", "4",
                 "--arrival", "constant", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(out.read_text())
    assert data["goodput"] == 40 and data["goodput_per_gpu"] == 10
    assert [p["request_rate"] for p in data["points"]] == [20, 40]
    assert [p["slo_attainment"] for p in data["points"]] == [0.5, 0.5]
    assert "raise --max-rate" in data["note"]
    assert "Goodput per GPU (4 GPUs):         10" in captured.out
    assert "attainment  50.0%  pass" in captured.err
    # Each point sends prompts the server has not seen, so a prefix cache cannot flatter it.
    assert stats("mixed/cli")["distinct_prompts"] == 2 * 8 + 1  # and the preflight probe


def test_a_trace_runs_at_its_own_pace(scripted_url: str, tmp_path: Path, capsys) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(
        json.dumps({"timestamp": 0.1 * i, "input_length": 8, "output_length": 2}) + "\n"
        for i in range(4)))
    out = tmp_path / "r.json"
    code = main(["run", "--url", scripted_url, "--model", "steady/trace", "--dataset",
                 str(trace), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["arrival"] == "trace" and data["request_rate"] is None
    sends = [r["send_time"] for r in data["requests"]]
    assert all(s >= 0.1 * i - 1e-3 for i, s in enumerate(sends))


def test_sharegpt_chat_with_a_tokenizer(scripted_url: str, tmp_path: Path, tokenizer_file,
                                        stats, capsys) -> None:
    data = [{"conversations": [{"from": "human", "value": f"Question {i}?"},
                               {"from": "gpt", "value": "A short answer."}]} for i in range(3)]
    dataset = tmp_path / "sharegpt.json"
    dataset.write_text(json.dumps(data))
    out = tmp_path / "r.json"
    code = main(["run", "--url", scripted_url, "--model", "steady/sharegpt", "--endpoint", "chat",
                 "--dataset", str(dataset), "--tokenizer", str(tokenizer_file),
                 "--concurrency", "2", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["backend"] == "openai-chat" and result["max_concurrency"] == 2
    assert result["completed"] == 3 and result["tokenizer_id"] == str(tokenizer_file)
    assert stats("steady/sharegpt")["last_body"]["messages"][0]["content"].startswith("Question")


def test_random_token_ids(scripted_url: str, stats, capsys) -> None:
    code = main(["run", "--url", scripted_url, "--model", "steady/ids", "--random-token-ids",
                 "--vocab-size", "100", "--input-len", "32", "--output-len", "2",
                 "--num-prompts", "2", "--rate", "inf", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    prompt = stats("steady/ids")["last_body"]["prompt"]
    assert len(prompt) == 32 and all(0 <= i < 100 for i in prompt)


def test_random_token_ids_from_a_trace_keep_its_lengths(scripted_url: str, stats, capsys,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 24, "output_length": 2}\n'
                    '{"timestamp": 0.01, "input_length": 24, "output_length": 2}\n')
    code = main(["run", "--url", scripted_url, "--model", "steady/trace-ids", "--dataset",
                 str(path), "--random-token-ids", "--vocab-size", "50", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    prompt = stats("steady/trace-ids")["last_body"]["prompt"]
    assert len(prompt) == 24 and all(0 <= i < 50 for i in prompt)


def test_a_server_rejecting_ignore_eos_is_noted(scripted_url: str, capsys) -> None:
    code = main(["run", "--url", scripted_url, "--model", "strict", "--rate", "inf",
                 "--num-prompts", "2", "--output-len", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "server rejects ignore_eos" in captured.err


def test_help_explains_each_command(capsys) -> None:
    for command in ("run", "goodput", "plot"):
        assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--slo-ttft SEC" in out and "--attainment" in out and "Latency CDFs of run" in out
    assert main([]) == 2
    assert "run" in capsys.readouterr().err


BAD_INPUT = [
    (["run", "--url", "URL", "--dataset", "/no/such/file.json", "--rate", "1"],
     "cannot read dataset /no/such/file.json"),
    (["run", "--url", "URL", "--dataset", "TMP", "--rate", "1"], "cannot read dataset"),
    (["run", "--url", "URL", "--rate", "0"], "argument --rate: must be positive (got 0)"),
    (["run", "--url", "URL", "--rate", "-2"], "argument --rate: must be positive (got -2)"),
    (["run", "--url", "URL", "--rate", "fast"], "argument --rate: not a number: 'fast'"),
    (["run", "--url", "URL", "--concurrency", "0"], "argument --concurrency: must be at least 1"),
    (["run", "--url", "URL", "--rate", "1", "--concurrency", "2"], "not allowed with"),
    (["run", "--url", "URL"], "give --rate R (requests/s) or --concurrency C"),
    (["run", "--rate", "1"], "the following arguments are required: --url"),
    (["goodput", "--url", "URL"], "goodput needs an SLO"),
    (["goodput", "--url", "URL", "--slo-ttft", "1", "--attainment", "1.5"], "must be in (0, 1]"),
    (["goodput", "--url", "URL", "--slo-ttft", "1", "--start-rate", "2", "--min-rate", "3"],
     "rates must satisfy"),
    (["run", "--url", "FREE", "--rate", "1"], "cannot reach"),
    (["run", "--url", "localhost:8000", "--rate", "1"], "URL must start with http://"),
    (["run", "--url", "URL", "--model", "nope", "--rate", "1"],
     "HTTP 404: The model `nope` does not exist."),
    (["run", "--url", "URL", "--rate", "1", "--endpoint", "chat", "--random-token-ids"],
     "--random-token-ids needs --endpoint completions"),
    (["run", "--url", "URL", "--rate", "1", "--cv", "2"], "--cv sets the burstiness"),
    (["run", "--url", "URL", "--dataset", "SHAREGPT", "--random-token-ids"],
     "--random-token-ids works with --dataset synthetic or a JSONL trace"),
    (["run", "--url", "URL", "--rate", "1", "--extra-body", "[1]"], "must be a JSON object"),
    (["run", "--url", "URL", "--rate", "1", "--tokenizer", "/no/tok"], "no tokenizer at"),
    (["run", "--url", "URL", "--rate", "1", "--input-dist", "uniform", "--input-spread", "1.5"],
     "spread 1.5 out of range"),
    (["plot", "TMP/none.json"], "cannot read result"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT)
def test_bad_input_gets_one_clear_line(argv: list[str], message: str, scripted_url: str,
                                       free_url: str, tmp_path: Path, capsys) -> None:
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text('[{"conversations": [{"from": "human", "value": "Hi?"}, '
                        '{"from": "gpt", "value": "Hello."}]}]')
    argv = [a.replace("URL", scripted_url).replace("FREE", free_url).replace("TMP", str(tmp_path))
            .replace("SHAREGPT", str(sharegpt)) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("pdserve bench"), err
    assert message in err


def test_bad_input_through_the_console_script_has_no_traceback() -> None:
    done = _bench("run", "--url", "http://127.0.0.1:9", "--rate", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == ("pdserve bench: error: argument --rate: must be positive "
                                   "(got 0) (see `pdserve bench run --help`)")
