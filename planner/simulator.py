"""Discrete-event simulation of prefill, KV transfer and decode, modelled on pdserve's engine.

An `Instance` is one engine (tp x pp GPUs) in one of three roles:

- `prefill`: FCFS over waiting prompts, each step takes up to `max_num_batched_tokens` prompt
  tokens (a long prompt is chunked across steps) and at most `max_num_seqs` requests; a request
  needs KV blocks for its prompt before it starts. With pipeline parallelism a new step enters
  the first stage after 1/pp of the previous step's latency. The blocks stay pinned until the
  decode instance has pulled them.
- `decode`: requests wait FCFS for admission (free KV blocks for their prompt, fewer than
  `max_num_seqs` sequences), then pull their KV over the instance's link (one transfer at a time),
  then join the running batch. Every step advances every running sequence by one token. When a
  sequence needs a new block and none is free, the most recently admitted sequence is preempted:
  its blocks are freed and it is recomputed later as a prefill chunk on this instance.
- `both` (colocated): one engine does both; each step runs all decodes plus prefill chunks in the
  rest of the token budget, so decodes wait for the prefill work (the interference). With
  `prefill_first` it behaves like vLLM before chunked prefill, the baseline DistServe measured:
  waiting prompts get steps of their own and every decode pauses for them.

Time is in seconds; step times come from a `StepTiming` in milliseconds.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from planner.latency_model import StepTiming, mixed_ms
from planner.memory import EngineLimits

# Fixed cost of setting up one KV pull (lease check, connection reuse), seconds.
TRANSFER_SETUP_S = 0.0005
# A run sustains its rate only if at most this many requests (or this share of them) were
# still waiting to start when the last one arrived (see SimResult).
BACKLOG_MIN = 8
BACKLOG_SHARE = 0.05
# Admission keeps this share of the KV pool free so that a new sequence does not force an
# immediate preemption (vLLM's watermark idea).
ADMISSION_WATERMARK = 0.01


class Request:
    """One simulated request and its progress through the instances."""

    __slots__ = (
        "idx", "arrival", "prompt", "output", "first_token", "finish",
        "job_len", "prefilled", "recompute", "blocks", "src", "src_blocks",
        "generated", "c0", "k0", "epoch",
    )

    def __init__(self, idx: int, arrival: float, prompt: int, output: int) -> None:
        self.idx = idx
        self.arrival = arrival
        self.prompt = prompt
        self.output = output  # tokens generated in total, the first one by prefill
        self.first_token = -1.0
        self.finish = -1.0
        self.job_len = prompt  # tokens the current prefill job covers
        self.prefilled = 0
        self.recompute = False
        self.blocks = 0  # KV blocks held on the instance doing its current phase
        self.src: Instance | None = None  # prefill instance still holding its KV
        self.src_blocks = 0
        self.generated = 0  # tokens produced by decode steps so far
        self.c0 = 0  # context length at its first step in the current batch
        self.k0 = 0  # decode step index at which it joined the current batch
        self.epoch = 0  # bumped on preemption so stale heap entries are skipped


class Simulation:
    """The event queue; handlers are called with one argument at their time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable, object]] = []
        self._seq = 0

    def at(self, time: float, handler: Callable, arg: object = None) -> None:
        heapq.heappush(self._heap, (time, self._seq, handler, arg))
        self._seq += 1

    def run(self) -> None:
        heap = self._heap
        while heap:
            time, _, handler, arg = heapq.heappop(heap)
            self.now = time
            handler(arg)


@dataclass(frozen=True)
class InstanceSpec:
    """What one simulated instance is: its role, step timing, memory and KV link."""

    role: str  # "prefill", "decode" or "both"
    timing: StepTiming
    pp: int
    capacity_tokens: int
    limits: EngineLimits
    kv_bytes_per_token: int = 0  # whole model, for the transfer size
    link_bytes_per_s: float = math.inf  # decode only: bandwidth its KV pulls get
    prefill_first: bool = False  # both only: prompts in steps of their own, decodes paused


class Instance:
    def __init__(self, sim: Simulation, spec: InstanceSpec,
                 on_first_token: Callable[[Request, Instance], None],
                 on_finish: Callable[[Request], None]) -> None:
        self.sim = sim
        self.spec = spec
        self.timing = spec.timing
        self.role = spec.role
        self.block_size = spec.limits.block_size
        self.max_seqs = spec.limits.max_num_seqs
        self.budget = spec.limits.max_num_batched_tokens
        self.total_blocks = spec.capacity_tokens // self.block_size
        self.free_blocks = self.total_blocks
        self.watermark = int(self.total_blocks * ADMISSION_WATERMARK)
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        self.busy = False
        self.prefill_queue: deque[Request] = deque()
        self.queued_tokens = 0  # prompt tokens queued or in flight: the router's least work
        self.waiting: deque[Request] = deque()  # decode: waiting for admission
        self.pulling = 0  # decode: admitted, KV in flight
        self.link_free_at = 0.0
        self.ready: list[Request] = []  # joins the running batch at the next step
        self.running: dict[int, Request] = {}  # insertion order = admission order
        self.k = 0  # index of the next decode step
        self.s0 = 0  # sum of (c0 - k0) over running: context = s0 + len(running) * k
        self.finish_heap: list[tuple[int, int, int]] = []  # (last step, idx, epoch)
        self.block_heap: list[tuple[int, int, int]] = []  # (step needing a block, idx, epoch)

    # -- entry points ------------------------------------------------------------------------

    def enqueue_prompt(self, req: Request) -> None:
        """A new request whose prompt this instance prefills (roles prefill and both)."""
        self.prefill_queue.append(req)
        self.queued_tokens += req.prompt
        self._kick()

    def arrive_for_decode(self, req: Request) -> None:
        """A prefilled request whose KV sits on `req.src` (role decode)."""
        self.waiting.append(req)
        self._admit()
        self._kick()

    def release(self, req: Request) -> None:
        """The decode side has pulled `req`'s KV: free the prefill-side blocks."""
        self.free_blocks += req.src_blocks
        req.src_blocks = 0
        req.src = None
        self._kick()

    def backlog(self) -> int:
        """Requests here that have not started: queued new prompts and unadmitted decodes."""
        fresh = sum(1 for r in self.prefill_queue if r.prefilled == 0 and not r.recompute)
        return fresh + len(self.waiting)

    def free_kv_score(self) -> int:
        """Free blocks not yet promised to waiting requests (the router's decode choice)."""
        waiting = sum(-(-r.prompt // self.block_size) for r in self.waiting)
        return self.free_blocks - waiting

    # -- admission and transfer (decode role) --------------------------------------------------

    def _admit(self) -> None:
        bs = self.block_size
        # Preempted sequences waiting to be recomputed go first.
        while self.waiting and not self.prefill_queue:
            if len(self.running) + len(self.ready) + self.pulling >= self.max_seqs:
                return
            req = self.waiting[0]
            need = -(-req.prompt // bs)
            if self.free_blocks - need < self.watermark and self.running:
                return
            if need > self.free_blocks:
                return
            self.waiting.popleft()
            self.free_blocks -= need
            req.blocks = need
            self.pulling += 1
            seconds = TRANSFER_SETUP_S + req.prompt * self.spec.kv_bytes_per_token / (
                self.spec.link_bytes_per_s)
            start = max(self.sim.now, self.link_free_at)
            self.link_free_at = start + seconds
            self.sim.at(self.link_free_at, self._pulled, req)

    def _pulled(self, req: Request) -> None:
        self.pulling -= 1
        if req.src is not None:
            req.src.release(req)
        self.ready.append(req)
        self._kick()

    # -- stepping --------------------------------------------------------------------------

    def _kick(self) -> None:
        if not self.busy:
            self._start_step()

    def _take_prefill(self, budget: int, seats: int) -> tuple[float, float, list[Request]]:
        """FCFS prefill chunks within the token budget; returns S, S2 and completed jobs."""
        tokens = 0.0
        squares = 0.0
        done: list[Request] = []
        bs = self.block_size
        queue = self.prefill_queue
        while queue and budget > 0 and seats > 0:
            req = queue[0]
            if req.prefilled == 0:
                need = -(-req.job_len // bs)
                if need > self.free_blocks:
                    break
                self.free_blocks -= need
                req.blocks = need
            start = req.prefilled
            chunk = min(req.job_len - start, budget)
            req.prefilled = start + chunk
            tokens += chunk
            squares += (start + chunk) ** 2 - start * start
            budget -= chunk
            seats -= 1
            if req.prefilled == req.job_len:
                queue.popleft()
                done.append(req)
        return tokens, squares, done

    def _start_step(self) -> None:
        if self.role == "prefill":
            tokens, squares, done = self._take_prefill(self.budget, self.max_seqs)
            if tokens == 0:
                return
            ms = self.timing.prefill_ms(tokens, squares)
            self.busy = True
            now = self.sim.now
            self.sim.at(now + ms / 1e3, self._prefill_done, done)
            # The first stage frees up after its share of the step (pipeline parallelism).
            self.sim.at(now + ms / 1e3 / self.spec.pp, self._stage_free)
            return
        if self.spec.prefill_first and self.prefill_queue:
            # vLLM's original policy: a step of waiting prompts alone, decodes paused.
            tokens, squares, done = self._take_prefill(
                self.budget, self.max_seqs - len(self.running) - len(self.ready))
            if tokens:
                self.busy = True
                ms = self.timing.prefill_ms(tokens, squares)
                self.sim.at(self.sim.now + ms / 1e3, self._step_done, (done, False))
                return
        self._join_ready()
        self._allocate_step_blocks()
        batch = len(self.running)
        context = self.s0 + batch * self.k
        if self.spec.prefill_first:
            tokens, squares, done = 0.0, 0.0, []
        else:
            tokens, squares, done = self._take_prefill(
                self.budget - batch, self.max_seqs - batch - len(self.ready) - self.pulling)
        if batch == 0 and tokens == 0:
            return
        ms = mixed_ms(self.timing, tokens, squares, batch, context)
        self.busy = True
        self.sim.at(self.sim.now + ms / 1e3, self._step_done, (done, batch > 0))

    def _stage_free(self, _: object) -> None:
        self.busy = False
        self._start_step()

    def _prefill_done(self, done: list[Request]) -> None:
        now = self.sim.now
        for req in done:
            self.queued_tokens -= req.prompt
            req.first_token = now
            req.src = self
            req.src_blocks = req.blocks
            req.blocks = 0
            self.on_first_token(req, self)

    def _step_done(self, arg: tuple[list[Request], bool]) -> None:
        done, decoded = arg
        now = self.sim.now
        if decoded:
            self._finish_step(now)
        for req in done:
            req.prefilled = 0
            if req.recompute:
                req.recompute = False
                self.ready.append(req)
                continue
            self.queued_tokens -= req.prompt
            req.first_token = now
            if req.output <= 1:
                self._free(req)
                req.finish = now
                self.on_finish(req)
            else:
                self.ready.append(req)
        self.busy = False
        self._admit()
        self._start_step()

    # -- the decode batch --------------------------------------------------------------------

    def _join_ready(self) -> None:
        if not self.ready:
            return
        k = self.k
        bs = self.block_size
        for req in self.ready:
            req.c0 = req.prompt + req.generated + 1
            req.k0 = k
            self.s0 += req.c0 - k
            self.running[req.idx] = req
            last = k + req.output - 2 - req.generated
            heapq.heappush(self.finish_heap, (last, req.idx, req.epoch))
            need = k + req.blocks * bs - (req.c0 - 1)
            if need <= last:
                heapq.heappush(self.block_heap, (need, req.idx, req.epoch))
        self.ready.clear()

    def _allocate_step_blocks(self) -> None:
        heap = self.block_heap
        k = self.k
        bs = self.block_size
        while heap and heap[0][0] <= k:
            _, idx, epoch = heapq.heappop(heap)
            req = self.running.get(idx)
            if req is None or req.epoch != epoch:
                continue
            while self.free_blocks < 1 and self.running:
                victim = self.running[next(reversed(self.running))]
                self._preempt(victim)
                if victim is req:
                    break
            if req.epoch != epoch:
                continue
            self.free_blocks -= 1
            req.blocks += 1
            nxt = k + bs
            if nxt <= req.k0 + req.output - 2 - req.generated:
                heapq.heappush(heap, (nxt, idx, epoch))

    def _preempt(self, req: Request) -> None:
        del self.running[req.idx]
        self.s0 -= req.c0 - req.k0
        req.generated += self.k - req.k0
        req.epoch += 1
        self._free(req)
        req.recompute = True
        req.job_len = req.prompt + req.generated
        req.prefilled = 0
        self.prefill_queue.appendleft(req)

    def _free(self, req: Request) -> None:
        self.free_blocks += req.blocks
        req.blocks = 0

    def _finish_step(self, now: float) -> None:
        heap = self.finish_heap
        k = self.k
        while heap and heap[0][0] <= k:
            _, idx, epoch = heapq.heappop(heap)
            req = self.running.get(idx)
            if req is None or req.epoch != epoch:
                continue
            del self.running[idx]
            self.s0 -= req.c0 - req.k0
            self._free(req)
            req.finish = now
            self.on_finish(req)
        self.k = k + 1


@dataclass(frozen=True)
class SimResult:
    """Per-request latencies (s), in arrival order; unfinished requests count as misses.

    `backlog` is how many requests were still waiting to start (not yet prefilling, or not yet
    admitted to a decode batch) when the last request arrived. A finite run can hide overload:
    a decode instance that falls behind still finishes every request eventually, and TPOT spreads
    the wait over the output tokens. Under steady traffic that queue would grow without end, so
    a run whose backlog exceeds `sustainable_backlog` does not count as sustaining its rate.
    """

    ttft: list[float]
    tpot: list[float]
    finish: list[float]  # when each request completed (inf if it never did)
    backlog: int = 0

    @property
    def sustainable_backlog(self) -> int:
        return max(BACKLOG_MIN, int(BACKLOG_SHARE * len(self.ttft)))

    @property
    def sustained(self) -> bool:
        return self.backlog <= self.sustainable_backlog

    def attainment(self, ttft_slo: float | None, tpot_slo: float | None) -> float:
        """Share of requests meeting every SLO given (None: that SLO is not checked)."""
        if not self.ttft:
            return 0.0
        ok = 0
        for ttft, tpot in zip(self.ttft, self.tpot, strict=True):
            if (ttft_slo is None or ttft <= ttft_slo) and (tpot_slo is None or tpot <= tpot_slo):
                ok += 1
        return ok / len(self.ttft)

    def percentile(self, which: str, q: float) -> float:
        values = sorted(self.ttft if which == "ttft" else self.tpot)
        if not values:
            return math.inf
        index = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
        return values[index]


def _run(sim: Simulation, requests: list[Request], instances: list[Instance],
         enter: Callable[[Request], None]) -> SimResult:
    """Feed `requests` to `enter` at their arrival times, run to the end, collect latencies."""
    for req in requests:
        sim.at(req.arrival, enter, req)
    backlog = [0]

    def probe(_: object) -> None:
        backlog[0] = sum(inst.backlog() for inst in instances)

    if requests:
        sim.at(requests[-1].arrival, probe)
    sim.run()
    ttft = []
    tpot = []
    finish = [r.finish if r.finish >= 0 else math.inf for r in requests]
    for r in requests:
        ttft.append(r.first_token - r.arrival if r.first_token >= 0 else math.inf)
        if r.finish < 0:
            tpot.append(math.inf)
        elif r.output > 1:
            tpot.append((r.finish - r.first_token) / (r.output - 1))
        else:
            tpot.append(0.0)
    return SimResult(ttft, tpot, finish, backlog[0])


def _make_requests(arrivals: list[float], prompts: list[int],
                   outputs: list[int]) -> list[Request]:
    return [Request(i, t, p, o) for i, (t, p, o) in
            enumerate(zip(arrivals, prompts, outputs, strict=True))]


def simulate_prefill(spec: InstanceSpec, arrivals: list[float], prompts: list[int]) -> SimResult:
    """One prefill instance on its own; blocks free as soon as a prompt is done."""
    sim = Simulation()
    requests = _make_requests(arrivals, prompts, [1] * len(prompts))

    def first_token(req: Request, inst: Instance) -> None:
        inst.release(req)
        req.finish = sim.now

    inst = Instance(sim, spec, first_token, _ignore)
    return _run(sim, requests, [inst], inst.enqueue_prompt)


def simulate_decode(spec: InstanceSpec, arrivals: list[float], prompts: list[int],
                    outputs: list[int]) -> SimResult:
    """One decode instance fed prefilled requests at `arrivals` (their first-token times)."""
    sim = Simulation()
    requests = _make_requests(arrivals, prompts, outputs)
    inst = Instance(sim, spec, _ignore_first_token, _ignore)

    def arrive(req: Request) -> None:
        req.first_token = sim.now
        if req.output <= 1:
            req.finish = sim.now
            return
        inst.arrive_for_decode(req)

    return _run(sim, requests, [inst], arrive)


def simulate_colocated(spec: InstanceSpec, arrivals: list[float], prompts: list[int],
                       outputs: list[int]) -> SimResult:
    """One colocated (role both) instance."""
    sim = Simulation()
    requests = _make_requests(arrivals, prompts, outputs)
    inst = Instance(sim, spec, _ignore_first_token, _ignore)
    return _run(sim, requests, [inst], inst.enqueue_prompt)


def simulate_deployment(prefill: list[InstanceSpec], decode: list[InstanceSpec],
                        arrivals: list[float], prompts: list[int],
                        outputs: list[int]) -> SimResult:
    """A whole deployment behind the router: the prefill instance with the least queued work,
    then the decode instance with the most free KV. With no decode instances, `prefill` are
    colocated (role both) instances."""
    sim = Simulation()
    requests = _make_requests(arrivals, prompts, outputs)
    decoders: list[Instance] = []

    def first_token(req: Request, src: Instance) -> None:
        if req.output <= 1:
            src.release(req)
            req.finish = sim.now
            return
        target = max(decoders, key=Instance.free_kv_score)
        target.arrive_for_decode(req)

    prefillers = [Instance(sim, s, first_token, _ignore) for s in prefill]
    decoders.extend(Instance(sim, s, first_token, _ignore) for s in decode)

    def route(req: Request) -> None:
        target = min(prefillers, key=lambda i: (i.queued_tokens, len(i.running)))
        target.enqueue_prompt(req)

    return _run(sim, requests, prefillers + decoders, route)


def _ignore(req: Request) -> None:
    return


def _ignore_first_token(req: Request, src: Instance) -> None:
    return
