"""Goodput of one instance: the highest request rate whose simulated SLO attainment holds.

A phase task is one instance shape in one role: a prefill instance judged on TTFT, a decode
instance judged on TPOT (KV pull and admission wait included), or a colocated instance judged on
both. Its goodput is found by bisection between 0 and a throughput bound that ignores latency;
because that bracket does not depend on the SLOs and every rate sees the same random draws, a
tighter SLO can never come out with a higher goodput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.arrivals import arrival_times
from planner.latency_model import StepTiming
from planner.memory import EngineLimits
from planner.simulator import (
    TRANSFER_SETUP_S,
    InstanceSpec,
    SimResult,
    simulate_colocated,
    simulate_decode,
    simulate_prefill,
)

# Requests per simulated run, at least, as a multiple of a decoding instance's batch capacity.
RUN_LENGTH = 3
# Bisection stops when the bracket is this tight relative to its top, or after MAX_STEPS.
TOLERANCE = 0.02
MAX_STEPS = 12


@dataclass(frozen=True)
class Slo:
    ttft: float  # seconds
    tpot: float  # seconds
    attainment: float  # share of requests that must meet them, e.g. 0.9


@dataclass(frozen=True)
class PhaseTask:
    """One instance shape to evaluate in one role."""

    phase: str  # "prefill", "decode" or "colocated"
    tp: int
    pp: int
    capacity_tokens: int
    link: str = ""  # decode: "network" or "nvlink"
    link_gb_s: float = math.inf  # decode: bandwidth of its KV pulls
    budget: int = 0  # prefill token budget per step (0: the engine default)
    policy: str = ""  # colocated: "chunked" (pdserve's engine) or "prefill-first" (vLLM v0)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def key(self) -> tuple:
        return (self.phase, self.tp, self.pp, self.link, self.budget, self.policy)

    def label(self) -> str:
        shape = f"tp{self.tp}" + (f"pp{self.pp}" if self.pp > 1 else "")
        if self.phase == "decode":
            return f"decode {shape} (KV over {self.link})"
        if self.phase == "colocated":
            return f"colocated {shape} ({self.policy}, budget {self.budget})"
        return f"prefill {shape}"


@dataclass
class PhaseOutcome:
    task: PhaseTask
    goodput: float  # requests/s one instance sustains within the SLOs
    bound: float  # throughput bound ignoring latency, requests/s
    reason: str | None = None  # why the goodput is zero or the task was skipped
    points: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment)
    idle_attainment: float | None = None  # attainment with no queueing at all

    @property
    def per_gpu(self) -> float:
        return self.goodput / self.task.gpus

    def to_json(self) -> dict:
        return {"goodput": self.goodput, "bound": self.bound, "reason": self.reason,
                "points": self.points, "idle_attainment": self.idle_attainment}


@dataclass(frozen=True)
class Sample:
    """The requests every simulation replays (lengths in tokens, unit-rate arrival gaps)."""

    prompts: list[int]
    outputs: list[int]
    gaps: list[float]


def _prefill_alone_s(timing: StepTiming, prompt: int, budget: int) -> float:
    """Seconds to prefill one prompt on an idle instance, chunked by the token budget."""
    total = 0.0
    done = 0
    while done < prompt:
        chunk = min(budget, prompt - done)
        total += timing.prefill_ms(chunk, (done + chunk) ** 2 - done * done)
        done += chunk
    return total / 1e3


def _decode_alone_tpot(timing: StepTiming, prompt: int, output: int, kv_bytes_per_token: int,
                       link_gb_s: float) -> float:
    """TPOT of one request alone on a decode instance, its KV pull included."""
    if output <= 1:
        return 0.0
    pull = TRANSFER_SETUP_S + prompt * kv_bytes_per_token / (link_gb_s * 1e9)
    # Step time is linear in the context, so the mean step is the step at the mean context.
    step = timing.decode_ms(1, prompt + output / 2) / 1e3
    return (pull + step * (output - 1)) / (output - 1)


def zero_load(task: PhaseTask, timing: StepTiming, sample: Sample, slo: Slo, budget: int,
              kv_bytes_per_token: int) -> tuple[float, str]:
    """Attainment with no queueing at all, and a sentence describing the median request."""
    ttfts = [_prefill_alone_s(timing, p, budget) for p in sample.prompts]
    tpots = [_decode_alone_tpot(timing, p, o, kv_bytes_per_token, task.link_gb_s)
             for p, o in zip(sample.prompts, sample.outputs, strict=True)]
    median_prompt = sorted(sample.prompts)[len(sample.prompts) // 2]
    if task.phase == "prefill":
        ok = sum(t <= slo.ttft for t in ttfts)
        what = (f"the median prompt ({median_prompt} tokens) takes "
                f"{_prefill_alone_s(timing, median_prompt, budget):.3f} s to prefill alone "
                f"against a TTFT target of {slo.ttft:g} s")
    elif task.phase == "decode":
        ok = sum(t <= slo.tpot for t in tpots)
        what = (f"alone, the median request gets {sorted(tpots)[len(tpots) // 2]:.3f} s per "
                f"output token (its KV pull included) against a TPOT target of {slo.tpot:g} s")
    else:
        ok = min(sum(t <= slo.ttft for t in ttfts), sum(t <= slo.tpot for t in tpots))
        what = (f"alone, the median prompt takes {sorted(ttfts)[len(ttfts) // 2]:.3f} s to "
                f"prefill (TTFT target {slo.ttft:g} s) and the median TPOT is "
                f"{sorted(tpots)[len(tpots) // 2]:.3f} s (target {slo.tpot:g} s)")
    return ok / len(sample.prompts), what


def throughput_bound(task: PhaseTask, timing: StepTiming, sample: Sample, limits: EngineLimits,
                     kv_bytes_per_token: int) -> float:
    """Requests/s the instance could sustain with perfect batching and no latency limit."""
    n = len(sample.prompts)
    mean_in = sum(sample.prompts) / n
    mean_sq = sum(p * p for p in sample.prompts) / n
    mean_out = sum(sample.outputs) / n
    budget = task.budget or limits.max_num_batched_tokens
    per_batch = max(budget / mean_in, 1.0)  # requests one full prefill step covers
    prefill_ms = timing.prefill_ms(per_batch * mean_in, per_batch * mean_sq)
    prefill_rate = per_batch * task.pp / prefill_ms * 1e3
    context = mean_in + mean_out / 2
    batch = max_concurrency(task.capacity_tokens, sample, limits)
    round_ms = timing.decode_ms(batch, batch * context)
    decode_rate = batch / round_ms * 1e3 / max(mean_out - 1, 1.0)
    if task.phase == "prefill":
        return prefill_rate
    if task.phase == "decode":
        pull_s = TRANSFER_SETUP_S + mean_in * kv_bytes_per_token / (task.link_gb_s * 1e9)
        return min(decode_rate, 1.0 / pull_s)
    return 1.0 / (1.0 / prefill_rate + 1.0 / decode_rate)


def max_concurrency(capacity_tokens: int, sample: Sample, limits: EngineLimits) -> int:
    """Sequences a decoding instance can hold at once (by KV capacity and max_num_seqs)."""
    n = len(sample.prompts)
    context = (sum(sample.prompts) + sum(sample.outputs) / 2) / n
    return max(1, min(limits.max_num_seqs, int(capacity_tokens / context)))


def long_enough(sample: Sample, concurrency: int) -> Sample:
    """The sample, repeated until it holds RUN_LENGTH times `concurrency` requests.

    A decoding instance soaks up a burst as large as its batch, so a run much shorter than
    that cannot tell a rate it sustains from one it only survives until the run ends.
    """
    times = math.ceil(RUN_LENGTH * concurrency / len(sample.prompts))
    if times <= 1:
        return sample
    return Sample(sample.prompts * times, sample.outputs * times, sample.gaps * times)


def instance_spec(task: PhaseTask, timing: StepTiming, limits: EngineLimits,
                  kv_bytes_per_token: int) -> InstanceSpec:
    """The simulator's view of one task's instance."""
    role = {"prefill": "prefill", "decode": "decode", "colocated": "both"}[task.phase]
    if task.budget:
        limits = EngineLimits(limits.block_size, limits.max_num_seqs, task.budget,
                              limits.gpu_memory_utilization)
    return InstanceSpec(role, timing, task.pp, task.capacity_tokens, limits,
                        kv_bytes_per_token, task.link_gb_s * 1e9,
                        prefill_first=task.policy == "prefill-first")


def simulate_task(task: PhaseTask, spec: InstanceSpec, sample: Sample, rate: float) -> SimResult:
    arrivals = arrival_times(sample.gaps, rate)
    if task.phase == "prefill":
        return simulate_prefill(spec, arrivals, sample.prompts)
    if task.phase == "decode":
        return simulate_decode(spec, arrivals, sample.prompts, sample.outputs)
    return simulate_colocated(spec, arrivals, sample.prompts, sample.outputs)


def task_attainment(task: PhaseTask, result: SimResult, slo: Slo) -> float:
    """The attainment this task is judged on; 0 when the run did not keep up with its rate."""
    if not result.sustained:
        return 0.0
    if task.phase == "prefill":
        return result.attainment(slo.ttft, None)
    if task.phase == "decode":
        return result.attainment(None, slo.tpot)
    # Each phase's share on its own, as for disaggregated instances (and as DistServe does), so
    # the two kinds of deployment are judged alike.
    return min(result.attainment(slo.ttft, None), result.attainment(None, slo.tpot))


def saturated_rate(task: PhaseTask, spec: InstanceSpec, sample: Sample) -> float:
    """Requests/s the instance completes with every request queued at once.

    No arrival rate above this can be sustained, however loose the SLOs; measured over the
    middle of the run (20% to 60% of requests done), where the instance is full.
    """
    done = sorted(simulate_task(task, spec, sample, math.inf).finish)
    first = int(0.2 * len(done))
    last = max(int(0.6 * len(done)), first + 1)
    span = done[last] - done[first]
    return (last - first) / span if span > 0 else math.inf


def find_goodput(task: PhaseTask, timing: StepTiming, sample: Sample, slo: Slo,
                 limits: EngineLimits, kv_bytes_per_token: int) -> PhaseOutcome:
    """Bisect the instance's rate for the highest one meeting the attainment target."""
    budget = task.budget or limits.max_num_batched_tokens
    bound = throughput_bound(task, timing, sample, limits, kv_bytes_per_token)
    attained, why = zero_load(task, timing, sample, slo, budget, kv_bytes_per_token)
    if attained < slo.attainment:
        return PhaseOutcome(task, 0.0, bound,
                            f"only {attained:.0%} meet the SLO even without load: {why}",
                            idle_attainment=attained)
    spec = instance_spec(task, timing, limits, kv_bytes_per_token)
    if task.phase != "prefill":
        sample = long_enough(sample, max_concurrency(task.capacity_tokens, sample, limits))
    ceiling = saturated_rate(task, spec, sample)
    points: list[tuple[float, float]] = []

    def passes(rate: float) -> bool:
        attainment = task_attainment(task, simulate_task(task, spec, sample, rate), slo)
        points.append((rate, attainment))
        return attainment >= slo.attainment

    low, high = 0.0, min(bound * 1.25, ceiling)
    # The bound ignores some effects (e.g. short prompts batch better than the mean): widen,
    # but never past what the instance completes when saturated.
    while passes(high):
        if high >= ceiling:
            return PhaseOutcome(task, high, bound, None, points, attained)
        low, high = high, min(high * 2, ceiling)
    for _ in range(MAX_STEPS):
        if high - low <= TOLERANCE * high:
            break
        mid = (low + high) / 2
        if passes(mid):
            low = mid
        else:
            high = mid
    reason = None if low > 0 else "no rate meets the SLO attainment target"
    return PhaseOutcome(task, low, bound, reason, points, attained)
