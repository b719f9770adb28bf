"""Who runs next: turns the queues into a plain step plan; the runner executes it.

Roles:
- prefill: FCFS, fills each step up to the token budget with prompt chunks (long prompts are
  chunked); a request leaves as soon as its first token is sampled, its blocks held for a
  decode worker to pull.
- decode: every running sequence advances one token per step (continuous batching); waiting
  requests are admitted when their blocks fit; their prompt KV is pulled from a prefill worker
  (or recomputed here when the pull fails or the request was preempted).
- both: decode tokens first, then prompt chunks with the budget left (chunked prefill).
When blocks run out, the newest running sequence is preempted: its blocks are freed and it
waits to be recomputed (full blocks usually survive in the prefix cache, so that is cheap).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.engine.block_manager import BlockManager
from services.engine.sequence import Sequence, Status


@dataclass
class ScheduledChunk:
    seq: Sequence
    num_tokens: int  # tokens computed this step, from seq.num_computed

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence, so a new token is sampled."""
        return self.seq.num_computed + self.num_tokens == len(self.seq.token_ids)


@dataclass
class SchedulerOutput:
    """The step plan: what to compute, plus what needs attention outside the model."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    kv_fetches: list[Sequence] = field(default_factory=list)  # admitted; pull their KV now
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.kv_fetches


class Scheduler:
    def __init__(
        self, blocks: BlockManager, role: str, max_num_seqs: int, max_num_batched_tokens: int
    ):
        if role not in ("prefill", "decode", "both"):
            raise ValueError(f"unknown role {role!r}; choose prefill, decode or both")
        self.blocks = blocks
        self.role = role
        self.max_num_seqs = max_num_seqs
        self.token_budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.fetching: dict[str, Sequence] = {}

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.fetching)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.token_budget
        # Running sequences first, decode tokens before the rest of chunked prompts, so a long
        # prompt never stalls the streams already under way.
        for seq in sorted(self.running, key=lambda s: s.num_uncomputed > 1):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            n = min(seq.num_uncomputed, budget)
            if not self._make_room(seq, seq.num_computed + n, out):
                continue
            out.chunks.append(ScheduledChunk(seq, n))
            budget -= n
        if out.preempted:
            return self._ordered(out)
        # Then admit waiting requests, oldest first, while blocks, seats and budget last.
        while self.waiting and len(self.running) + len(self.fetching) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.kv_source is not None and seq.num_computed == 0 and not seq.num_preemptions:
                if not self._admit_remote(seq):
                    break
                self.waiting.popleft()
                out.kv_fetches.append(seq)
                continue
            if budget == 0:
                break
            if not self._admit_local(seq):
                break
            self.waiting.popleft()
            n = min(seq.num_uncomputed, budget)
            out.chunks.append(ScheduledChunk(seq, n))
            budget -= n
        return self._ordered(out)

    def _ordered(self, out: SchedulerOutput) -> SchedulerOutput:
        # Multi-token chunks first, single tokens last: the runner batches the tail as decodes.
        out.chunks.sort(key=lambda c: c.num_tokens == 1)
        return out

    def _admit_local(self, seq: Sequence) -> bool:
        """Admit a request whose prompt this engine computes; reuse cached prefix blocks."""
        # At least one token must be computed to get logits, so the prefix hit stops short.
        cached = self.blocks.match_prefix(seq.token_ids, len(seq.token_ids) - 1)
        total = len(seq.token_ids)
        if not self.blocks.can_allocate(seq, total, cached):
            return False
        self.blocks.allocate(seq, total, cached)
        seq.num_computed = len(cached) * self.blocks.block_size
        seq.num_cached = seq.num_computed
        seq.status = Status.RUNNING
        self.running.append(seq)
        return True

    def _admit_remote(self, seq: Sequence) -> bool:
        """Decode role: allocate blocks for the prompt (and the first token), then pull."""
        cached = self.blocks.match_prefix(seq.prompt_ids, seq.num_prompt)
        total = len(seq.token_ids)
        if not self.blocks.can_allocate(seq, total, cached):
            return False
        self.blocks.allocate(seq, total, cached)
        seq.num_cached = len(cached) * self.blocks.block_size
        seq.status = Status.WAITING_FOR_KV
        self.fetching[seq.request_id] = seq
        return True

    def kv_arrived(self, seq: Sequence, ok: bool) -> None:
        """The pull finished: join the batch, or recompute the prompt here if it failed."""
        self.fetching.pop(seq.request_id, None)
        seq.num_computed = seq.num_prompt if ok else seq.num_cached
        if ok:
            self.blocks.register_computed(seq)
        seq.status = Status.RUNNING
        self.running.append(seq)

    def _make_room(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> bool:
        """Ensure blocks for `num_tokens` tokens of `seq`, preempting newer sequences if needed."""
        while not self.blocks.can_allocate(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is seq:
                return False
        self.blocks.allocate(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        out.chunks = [c for c in out.chunks if c.seq is not seq]

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence that is done (or aborted) from whatever queue holds it."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq.request_id in self.fetching:
            del self.fetching[seq.request_id]
        elif seq in self.waiting:
            self.waiting.remove(seq)
