"""Workers with tensor parallelism: real worker processes (each with its follower ranks), real
KV transfer between prefill and decode workers that split the KV heads differently.

A tiny random Llama (8 heads, 4 KV heads, float32) keeps the six processes cheap; every
disaggregated run must produce exactly the tokens of one offline engine at TP=1.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import torch
from test_up import alive, descendants
from test_workers import decode_body, kv_idle, prefill, stream_lines, tokens_of
from worker_processes import AUTH, Worker, reference_tokens, start_workers, stop_all, wait_until

from services.engine.llm import LLM
from services.registry import EmbeddedRedis
from tests.engine.conftest import write_tiny_checkpoint

LEASE_SECONDS = 6
PROMPT_LENGTHS = [5, 16, 37, 70]


@dataclass
class Fleet:
    prefill: dict[int, Worker]  # by tensor-parallel size
    decode: dict[int, Worker]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-tp"), num_key_value_heads=4)


@pytest.fixture(scope="module")
def fleet(redis_server: EmbeddedRedis, tiny_model: Path, tmp_path_factory) -> Iterator[Fleet]:
    common = ["--model", str(tiny_model), "--kv-backend", "tcp"]
    specs = [
        (role, f"{role}-tp{tp}", [*common, "--tensor-parallel-size", str(tp), *extra])
        for role, extra in (("prefill", ["--kv-lease-seconds", str(LEASE_SECONDS)]), ("decode", []))
        for tp in (1, 2)
    ]
    workers = start_workers(redis_server.url, tmp_path_factory.mktemp("tp-workers"), specs)
    by_id = {w.worker_id: w for w in workers}
    yield Fleet(
        prefill={tp: by_id[f"prefill-tp{tp}"] for tp in (1, 2)},
        decode={tp: by_id[f"decode-tp{tp}"] for tp in (1, 2)},
    )
    stop_all(*workers)


@pytest.fixture(scope="module")
def offline(tiny_model: Path) -> LLM:
    return LLM(str(tiny_model), dtype="float32", num_kv_blocks=256)


def random_prompts(seed: int) -> list[list[int]]:
    """Prompts no other test sends (a decode worker's prefix cache would skip the pull)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 49152, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def followers_of(worker: Worker) -> set[int]:
    return {pid for pid in descendants(worker.proc.pid) if alive(pid)}


@pytest.mark.parametrize(
    ("prefill_tp", "decode_tp"), [(1, 2), (2, 1), (2, 2)], ids=["1to2", "2to1", "2to2"]
)
def test_disaggregated_across_layouts_equals_one_engine(
    fleet: Fleet, offline: LLM, prefill_tp: int, decode_tp: int
) -> None:
    source, target = fleet.prefill[prefill_tp], fleet.decode[decode_tp]
    prompts = random_prompts(10 * prefill_tp + decode_tp)
    expected = reference_tokens(offline, prompts, 12)
    for i, (prompt, want) in enumerate(zip(prompts, expected, strict=True)):
        rid = f"tp-{prefill_tp}-{decode_tp}-{i}"
        first = prefill(source, rid, prompt, 12)
        params = first["kv_transfer_params"]
        assert params["tp_size"] == prefill_tp and len(params["ranks"]) == prefill_tp
        lines = stream_lines(f"{target.url}/internal/decode", decode_body(rid, prompt, first, 12))
        assert [first["token_id"], *tokens_of(lines)] == want, f"prompt {i} diverges"
        assert lines[-1]["kv"] == "pulled"
        # Every rank's lease went back, so the prefill side holds nothing.
        assert source.metric("kv_leases_active") == 0
    assert target.metric("kv_transfer_bytes_total") > 0
    wait_until(lambda: kv_idle(source) and kv_idle(target), "KV usage back to zero")


def test_a_tp_worker_registers_its_size_and_every_rank_port(
    fleet: Fleet, redis_server: EmbeddedRedis
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    record = json.loads(client.get(f"pdserve:worker:{fleet.prefill[2].worker_id}"))
    client.close()
    assert record["tp_size"] == 2
    health = fleet.prefill[2].health()
    assert health["tp_size"] == 2 and len(set(health["kv_ports"])) == 2
    assert health["kv_ports"][0] == health["kv_port"]
    assert len(followers_of(fleet.prefill[2])) == 1 and not followers_of(fleet.prefill[1])


def test_a_prompt_cached_on_a_tp_decode_worker_hands_back_every_lease(
    fleet: Fleet, offline: LLM
) -> None:
    prompt = list(range(9000, 9032))  # two whole blocks: all of it can be cached
    (want,) = reference_tokens(offline, [prompt], 4)
    for attempt, kv in enumerate(("pulled", "cached")):
        rid = f"tp-cache-{attempt}"
        first = prefill(fleet.prefill[2], rid, prompt, 4)
        body = decode_body(rid, prompt, first, 4)
        lines = stream_lines(f"{fleet.decode[2].url}/internal/decode", body)
        assert [first["token_id"], *tokens_of(lines)] == want
        assert lines[-1]["kv"] == kv
        assert fleet.prefill[2].metric("kv_leases_active") == 0
    wait_until(lambda: kv_idle(fleet.prefill[2]) and kv_idle(fleet.decode[2]), "KV usage at zero")


def test_held_kv_of_a_tp_prefill_goes_back_on_abort_and_on_expiry(
    fleet: Fleet, offline: LLM
) -> None:
    worker, prompts = fleet.prefill[2], random_prompts(99)
    prefill(worker, "tp-held", prompts[3], 50)
    assert worker.metric("kv_leases_active") == 1 and worker.metric("kv_cache_usage_perc") > 0
    answer = httpx.post(
        f"{worker.url}/internal/abort", headers=AUTH, json={"request_id": "tp-held"}
    )
    assert answer.json() == {"aborted": True}
    wait_until(lambda: kv_idle(worker), "the aborted prompt's blocks on every rank")

    (want,) = reference_tokens(offline, [prompts[2]], 5)
    first = prefill(worker, "tp-expired", prompts[2], 5)
    wait_until(lambda: kv_idle(worker), "every rank's lease to expire", timeout=LEASE_SECONDS + 30)
    body = decode_body("tp-expired", prompts[2], first, 5)
    lines = stream_lines(f"{fleet.decode[1].url}/internal/decode", body)
    assert [first["token_id"], *tokens_of(lines)] == want
    assert lines[-1]["kv"] == "recomputed"


def test_stopping_or_killing_a_tp_worker_ends_its_follower_ranks(fleet: Fleet) -> None:
    stopped, killed = fleet.decode[2], fleet.prefill[2]
    stopped_followers, killed_followers = followers_of(stopped), followers_of(killed)
    assert len(stopped_followers) == len(killed_followers) == 1
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.stop() == 0
    assert not any(alive(pid) for pid in stopped_followers)
    killed.kill()  # SIGKILL: rank 0 cannot tell its follower anything
    wait_until(lambda: not any(alive(pid) for pid in killed_followers), "the orphaned rank to exit")


def test_up_passes_the_tensor_parallel_size_to_every_worker() -> None:
    from services.up import build_parser, components

    args = build_parser().parse_args(["--tensor-parallel-size", "3", "--prefill", "2"])
    workers = [c for c in components(args, "redis://127.0.0.1:1/0", "token", "tcp")
               if c.name != "router"]
    assert [c.name for c in workers] == ["prefill-0", "prefill-1", "decode-0"]
    for worker in workers:
        flag = worker.command.index("--tensor-parallel-size")
        assert worker.command[flag + 1] == "3"
