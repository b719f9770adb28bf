"""The discrete-event simulator against closed forms and the engine's documented behaviour."""

from __future__ import annotations

import math
import statistics

import pytest

from planner.arrivals import arrival_times, unit_gaps
from planner.fitted_profile import Coefficients, FittedTiming
from planner.memory import EngineLimits
from planner.simulator import (
    TRANSFER_SETUP_S,
    InstanceSpec,
    simulate_colocated,
    simulate_decode,
    simulate_deployment,
    simulate_prefill,
)

# Prefill: 20 ms + 0.05 ms per token; decode: 5 ms per step plus 0.1 ms per sequence.
COEFFICIENTS = Coefficients((20.0, 0.05, 0.0), (5.0, 0.0, 0.1), (5.0, 0.0, 0.1), 95)
FLAT_DECODE = Coefficients((20.0, 0.05, 0.0), (5.0, 0.0, 0.0), (5.0, 0.0, 0.0), 95)
KV_BYTES = 100_000  # per token


def spec(role: str, budget: int = 2048, capacity: int = 10**6, pp: int = 1,
         coefficients: Coefficients = COEFFICIENTS, link_gb_s: float = 10.0,
         prefill_first: bool = False) -> InstanceSpec:
    return InstanceSpec(role, FittedTiming(coefficients, pp), pp, capacity,
                        EngineLimits(16, 256, budget), KV_BYTES, link_gb_s * 1e9,
                        prefill_first=prefill_first)


def test_prefill_one_per_step_is_an_md1_queue():
    # Budget = prompt length, so each step is one prompt: deterministic service D = 70 ms.
    n, length, rate = 20000, 1000, 10.0
    arrivals = arrival_times(unit_gaps(n, "poisson", 1.0, 5), rate)
    result = simulate_prefill(spec("prefill", budget=length), arrivals, [length] * n)
    service = 0.070
    rho = rate * service
    expected = service + rho * service / (2 * (1 - rho))  # Pollaczek-Khinchine
    assert statistics.mean(result.ttft) == pytest.approx(expected, rel=0.05)


def test_batching_prompts_cuts_queueing():
    n, length, rate = 3000, 1000, 12.0
    arrivals = arrival_times(unit_gaps(n, "poisson", 1.0, 5), rate)
    single = simulate_prefill(spec("prefill", budget=length), arrivals, [length] * n)
    batched = simulate_prefill(spec("prefill", budget=8 * length), arrivals, [length] * n)
    # Batching saves the 20 ms fixed cost per prompt: 84% busy drops to about 60%.
    assert statistics.mean(batched.ttft) < 0.8 * statistics.mean(single.ttft)


def test_long_prompts_are_chunked_by_the_budget():
    result = simulate_prefill(spec("prefill", budget=512), [0.0], [2048])
    # Four chunks of 512: each 20 + 0.05 * 512 = 45.6 ms.
    assert result.ttft[0] == pytest.approx(4 * 0.0456)


def test_pipelined_prefill_takes_a_new_batch_each_stage_time():
    n, length, rate = 2000, 1000, 20.0  # one stage would need 1.4 s of work per second
    arrivals = arrival_times(unit_gaps(n, "poisson", 1.0, 5), rate)
    flat = simulate_prefill(spec("prefill", budget=length), arrivals, [length] * n)
    piped = simulate_prefill(spec("prefill", budget=length, pp=2), arrivals, [length] * n)
    assert not flat.sustained and piped.sustained
    assert statistics.mean(piped.ttft) < 0.2


def test_lone_decode_request_gets_one_token_per_step_after_its_pull():
    prompt, output = 1000, 101
    result = simulate_decode(spec("decode", coefficients=FLAT_DECODE), [0.0], [prompt], [output])
    pull = TRANSFER_SETUP_S + prompt * KV_BYTES / 10e9
    assert result.tpot[0] == pytest.approx((pull + 100 * 0.005) / 100)


def test_continuous_batching_shares_steps():
    # Flat step cost: ten requests together decode as fast as one.
    alone = simulate_decode(spec("decode", coefficients=FLAT_DECODE), [0.0], [100], [50])
    together = simulate_decode(spec("decode", coefficients=FLAT_DECODE), [0.0] * 10,
                               [100] * 10, [50] * 10)
    assert max(together.tpot) < alone.tpot[0] * 1.15
    # With a per-sequence cost, the batch slows every step a little.
    costly = simulate_decode(spec("decode"), [0.0] * 10, [100] * 10, [50] * 10)
    assert min(costly.tpot) > max(together.tpot)


def test_full_kv_cache_preempts_and_recomputes_but_finishes_everything():
    prompts, outputs = [40] * 6, [60] * 6
    roomy = simulate_decode(spec("decode"), [0.0] * 6, prompts, outputs)
    # 12 blocks of 16 tokens: room for two of the 100-token sequences at a time.
    tight = simulate_decode(spec("decode", capacity=192), [0.0] * 6, prompts, outputs)
    assert all(math.isfinite(t) for t in tight.tpot)
    assert statistics.mean(tight.tpot) > 1.5 * statistics.mean(roomy.tpot)


def test_slow_link_delays_decode():
    fast = simulate_decode(spec("decode", link_gb_s=100), [0.0] * 20, [2000] * 20, [20] * 20)
    slow = simulate_decode(spec("decode", link_gb_s=0.5), [0.0] * 20, [2000] * 20, [20] * 20)
    # 0.4 s per pull on the slow link, one pull at a time.
    assert max(slow.tpot) > 0.35 * 20 / 19
    assert max(fast.tpot) < 0.02


def test_colocated_decodes_wait_for_prefill_work():
    n, rate = 400, 8.0
    arrivals = arrival_times(unit_gaps(n, "poisson", 1.0, 2), rate)
    prompts, outputs = [1500] * n, [100] * n
    alone = simulate_decode(spec("decode"), arrivals, prompts, outputs)
    mixed = simulate_colocated(spec("both"), arrivals, prompts, outputs)
    paused = simulate_colocated(spec("both", prefill_first=True), arrivals, prompts, outputs)
    assert mixed.percentile("tpot", 0.9) > 2 * alone.percentile("tpot", 0.9)
    assert paused.percentile("tpot", 0.9) > 2 * alone.percentile("tpot", 0.9)
    # Pausing decodes for whole prompts favours TTFT over chunked mixing.
    assert paused.percentile("ttft", 0.5) < mixed.percentile("ttft", 0.5)


def test_deployment_spreads_prompts_over_prefill_instances():
    n, rate = 2000, 18.0
    arrivals = arrival_times(unit_gaps(n, "poisson", 1.0, 4), rate)
    prompts, outputs = [1000] * n, [20] * n
    one = simulate_deployment([spec("prefill", budget=1000)], [spec("decode")], arrivals,
                              prompts, outputs)
    two = simulate_deployment([spec("prefill", budget=1000)] * 2, [spec("decode")], arrivals,
                              prompts, outputs)
    assert not one.sustained  # 18 req/s x 70 ms: more than one instance can do
    assert two.sustained and two.percentile("ttft", 0.9) < 0.3
    assert all(math.isfinite(t) for t in two.tpot)


def test_overload_is_flagged_even_when_every_request_finishes():
    n = 600
    arrivals = arrival_times(unit_gaps(n, "poisson", 1.0, 1), 400.0)
    result = simulate_decode(spec("decode", capacity=16 * 100), arrivals, [80] * n, [200] * n)
    assert all(math.isfinite(t) for t in result.tpot)
    assert not result.sustained
