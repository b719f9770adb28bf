"""The scheduler under churn: preemption, aborts and prefix sharing never leak a block."""

from __future__ import annotations

import random

import pytest

from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.sampling_params import SamplingParams
from tests.engine.conftest import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def make_engine(directory, **overrides) -> LLMEngine:
    args = dict(
        model=str(directory),
        dtype="float32",
        num_kv_blocks=48,
        max_num_batched_tokens=256,
        max_num_seqs=32,
    )
    args.update(overrides)
    return LLMEngine(EngineConfig(**args))


def run_to_completion(engine: LLMEngine) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for o in engine.step().outputs:
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    return out


def assert_all_blocks_free(engine: LLMEngine) -> None:
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert all(rc == 0 for rc in engine.blocks.ref_counts)
    assert not engine.requests and not engine.held


def test_500_requests_with_aborts_and_preemption_leave_every_block_free(tiny_dir):
    engine = make_engine(tiny_dir)
    rng = random.Random(7)
    shared = [rng.randrange(3, 49152) for _ in range(64)]
    submitted = finished = 0
    live: list[str] = []
    while submitted < 500 or engine.has_work():
        while submitted < 500 and len(live) < 24:
            rid = f"r{submitted}"
            prefix = shared[: rng.choice([0, 16, 48, 64])]
            prompt = prefix + [rng.randrange(3, 49152) for _ in range(rng.randint(1, 120))]
            params = SamplingParams(
                max_tokens=rng.randint(1, 60),
                ignore_eos=True,
                temperature=rng.choice([0.0, 0.8]),
                seed=submitted,
            )
            engine.add_request(rid, prompt, params)
            live.append(rid)
            submitted += 1
        for o in engine.step().outputs:
            if o.finished:
                live.remove(o.request_id)
                finished += 1
        if live and rng.random() < 0.08:
            victim = live.pop(rng.randrange(len(live)))
            assert engine.abort(victim)
    assert finished > 350
    assert engine.num_preemptions > 0, "the pool is small enough that preemption must happen"
    assert_all_blocks_free(engine)


def test_preempted_requests_produce_the_same_tokens(tiny_dir):
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 49152) for _ in range(rng.randint(20, 90))] for _ in range(12)]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    results = []
    for blocks in (400, 30):  # ample, then so few that sequences get preempted
        engine = make_engine(tiny_dir, num_kv_blocks=blocks)
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        results.append(run_to_completion(engine))
        assert_all_blocks_free(engine)
    assert engine.num_preemptions > 0
    assert results[0] == results[1]


def test_shared_prefix_computes_only_the_suffix(smollm2_engine):
    engine = smollm2_engine
    rng = random.Random(11)
    prefix = [rng.randrange(3, 49152) for _ in range(256)]
    first = prefix + [rng.randrange(3, 49152) for _ in range(40)]
    second = prefix + [rng.randrange(3, 49152) for _ in range(23)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    def generate(rid: str, prompt: list[int]) -> tuple[list[int], int, int]:
        engine.add_request(rid, prompt, params)
        computed, tokens, cached = 0, [], -1
        while engine.has_work():
            step = engine.step()
            computed += step.num_prefill_tokens
            for o in step.outputs:
                tokens += o.new_token_ids
                cached = o.num_cached_tokens
        return tokens, computed, cached

    generate("first", first)
    with_cache, computed, cached = generate("second", second)
    assert cached == 256
    assert computed == len(second) - 256
    engine.blocks.caching = False
    try:
        without_cache, computed_all, _ = generate("second-uncached", second)
    finally:
        engine.blocks.caching = True
    assert computed_all == len(second)
    assert with_cache == without_cache


def test_prefill_then_decode_roles_equal_colocated(tiny_dir):
    """Prefill on one engine, copy the held blocks, decode on another: same tokens as `both`."""
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 49152) for _ in range(n)] for n in (5, 33, 70)]
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    both = make_engine(tiny_dir, num_kv_blocks=200)
    for i, p in enumerate(prompts):
        both.add_request(str(i), p, params)
    expected = run_to_completion(both)

    prefill = make_engine(tiny_dir, role="prefill", num_kv_blocks=200)
    decode = make_engine(tiny_dir, role="decode", num_kv_blocks=200)
    for i, p in enumerate(prompts):
        prefill.add_request(str(i), p, params)
    held = {}
    while prefill.has_work():
        for o in prefill.step().outputs:
            assert o.finish_reason.value == "prefill_done"
            held[o.request_id] = o
    assert len(prefill.held) == len(prompts)
    got = {rid: list(o.new_token_ids) for rid, o in held.items()}
    for rid, o in held.items():
        decode.add_request(
            rid, prompts[int(rid)], params, kv_source={"from": "test"}, output_ids=o.new_token_ids
        )
    fetched = 0
    while decode.has_work() or decode.scheduler.fetching:
        step = decode.step()
        for fetch in step.kv_fetches:
            src = held[fetch.request_id].block_ids
            start = fetch.num_cached_blocks
            decode.pool.tensor[fetch.block_ids[start:]] = prefill.pool.tensor[src[start:]]
            assert prefill.release(fetch.request_id)
            # Fail one pull on purpose: that request must recompute its prompt and still agree.
            decode.kv_arrived(fetch.request_id, ok=fetch.request_id != "1")
            fetched += 1
        for o in step.outputs:
            got[o.request_id] += o.new_token_ids
    assert fetched == len(prompts)
    assert got == expected
    assert_all_blocks_free(prefill)
    assert_all_blocks_free(decode)


def test_abort_frees_waiting_running_and_held_requests(tiny_dir):
    engine = make_engine(tiny_dir, role="prefill", num_kv_blocks=100)
    params = SamplingParams(max_tokens=5, ignore_eos=True)
    engine.add_request("held", list(range(3, 40)), params)
    while engine.has_work():
        engine.step()
    engine.add_request("waiting", list(range(3, 50)), params)
    assert engine.blocks.num_used > 0
    assert engine.abort("held") and engine.abort("waiting")
    assert not engine.abort("never-existed")
    assert_all_blocks_free(engine)



def test_a_kv_fetch_is_announced_before_its_step_computes_so_the_pull_overlaps_it():
    """The decode worker starts a pull from `on_fetches`; the step then still runs the batch,
    and KV that arrived meanwhile joins the very next step (one step sooner than if the fetch
    came out with the step's result). SmolLM2, whose greedy tokens do not hinge on rounding."""
    engine = LLMEngine(EngineConfig(model="smollm2", role="decode", dtype="float32",
                                    num_kv_blocks=32))
    params = SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.0)
    prompt = list(range(1000, 1032))  # two blocks
    engine.add_request("warm", prompt, params)  # computed here, so its blocks are cached
    expected = run_to_completion(engine)["warm"]
    engine.add_request("busy", list(range(2000, 2020)), params)
    engine.step()  # "busy" prefills, and decodes from here on
    engine.add_request(
        "pulled", prompt, params, kv_source={"from": "test"}, output_ids=expected[:1]
    )
    busy = engine.requests["busy"]
    seen: list[tuple[str, int]] = []

    def on_fetches(fetches):
        for fetch in fetches:
            seen.append((fetch.request_id, len(busy.token_ids)))
            engine.kv_arrived(fetch.request_id, ok=True)  # all blocks cached: nothing to copy

    tokens_before = len(busy.token_ids)
    step = engine.step(on_fetches=on_fetches)
    assert seen == [("pulled", tokens_before)]  # before the batch computed this step
    assert step.kv_fetches == []  # handed over already, not announced twice
    assert [o.request_id for o in step.outputs] == ["busy"]
    assert step.num_joined == 1  # "busy"'s first decode step, after its prefill
    step = engine.step()
    assert {o.request_id: o.new_token_ids for o in step.outputs}["pulled"] == expected[1:2]
    assert (step.num_decode_tokens, step.num_joined) == (2, 1)  # "pulled" joined the batch
    assert expected[1:2] + run_to_completion(engine)["pulled"] == expected[1:]
    assert_all_blocks_free(engine)
