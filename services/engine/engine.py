"""The engine loop: scheduler -> runner -> sampler -> scheduler, one step at a time.

`LLMEngine` is synchronous and single-threaded on purpose: the services run `step()` in a
dedicated thread and talk to it through thread-safe queues; the offline `LLM` calls it directly.

With `tensor_parallel_size` N > 1 this process is rank 0: it schedules, samples and owns the
block ids, and starts N-1 follower processes that hold the rest of the model and of the KV
heads (see `parallel.py`, `followers.py`); `close()` stops them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from services.engine.block_manager import BlockManager
from services.engine.checkpoint import Checkpoint, peek_config, resolve
from services.engine.config import EngineConfig
from services.engine.errors import InvalidRequestError, PromptTooLongError
from services.engine.followers import Followers
from services.engine.kv_cache import KVLayout, KVPool, KVShard
from services.engine.model import LlamaForCausalLM
from services.engine.model_runner import ModelRunner
from services.engine.parallel import TPGroup, TPShard, check_tensor_parallel
from services.engine.sampler import TokenLogprobs, sample
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import Scheduler
from services.engine.sequence import FinishReason, Sequence, Status
from services.engine.tokenizer import Tokenizer
from services.engine.weights import load_weights, weight_slices

log = logging.getLogger("pdserve.engine")

DEFAULT_KV_MEMORY_GIB_CPU = 2.0
CUDA_MEMORY_FRACTION = 0.85


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)  # prefill role: the held blocks


@dataclass
class KVFetch:
    """Decode role: blocks were allocated for a request; pull its prompt KV into them."""

    request_id: str
    kv_source: dict
    block_ids: list[int]  # destination blocks for the whole prompt
    num_cached_blocks: int  # leading blocks already here from the prefix cache


@dataclass
class StepResult:
    outputs: list[RequestOutput]
    kv_fetches: list[KVFetch]
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    seconds: float = 0.0
    num_joined: int = 0  # sequences in their first decode step (pulled KV or a fresh prefill)
    threads: int = 0  # CPU threads the step ran with (0 on a GPU)


@dataclass
class EngineStats:
    """A snapshot of load, as the registry and /metrics report it."""

    num_running: int
    num_waiting: int
    num_fetching: int
    num_held: int
    queued_prefill_tokens: int
    free_blocks: int
    total_blocks: int
    num_preemptions: int


class LLMEngine:
    def __init__(self, config: EngineConfig, checkpoint: Checkpoint | None = None):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = config.torch_device()
        self.dtype = config.torch_dtype()
        tp = config.tensor_parallel_size
        if tp != 1:  # before anything is loaded or converted
            shape = checkpoint.config if checkpoint else peek_config(config.model)
            check_tensor_parallel(tp, shape, self.device)
        self.checkpoint = checkpoint or resolve(config.model)
        self.model_config = cfg = self.checkpoint.config
        self.shard = TPShard.of(cfg, 0, tp)
        self.followers: Followers | None = None
        self.group: TPGroup | None = None
        t0 = time.perf_counter()
        if tp != 1:
            # The followers load their shards while this rank loads its own.
            self.followers = Followers.start(config, self.checkpoint, self.device)
        try:
            if self.followers is not None:
                self.group = self.followers.connect(self.device)
            self.tokenizer = Tokenizer.from_checkpoint(self.checkpoint)
            self.model = self._load_model()
            log.info("loaded %s in %.1f s", config.model, time.perf_counter() - t0)
            self.max_model_len = min(
                config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings
            )
            self.layout = self._kv_layout()
            # A sequence must fit the pool on its own, or it would preempt itself forever.
            kv_tokens = self.layout.num_blocks * config.block_size
            if kv_tokens < self.max_model_len:
                log.warning(
                    "KV cache holds %d tokens: max_model_len lowered from %d",
                    kv_tokens,
                    self.max_model_len,
                )
                self.max_model_len = kv_tokens
            self.pool = KVPool(self.layout, self.device)
            if self.followers is not None:
                self.followers.share_pools(self.layout, self.max_model_len + 1)
                self.followers.wait_ready()
        except BaseException:
            if self.followers is not None:
                self.followers.kill()
            raise
        self.blocks = BlockManager(
            self.layout.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.blocks, config.role, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.runner = ModelRunner(
            self.model, cfg, self.pool, self.device, self.dtype, self.max_model_len + 1, self.group
        )
        self.requests: dict[str, Sequence] = {}
        self.held: dict[str, Sequence] = {}
        self.num_preemptions = 0
        self.eos_token_ids = set(cfg.eos_token_ids) | set(self.tokenizer.eos_token_ids)

    def _load_model(self) -> LlamaForCausalLM:
        cfg, shard = self.model_config, self.shard
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg, shard, self.group)
        model = model.to(self.dtype).to_empty(device=self.device)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        select = weight_slices(cfg, shard) if shard.size > 1 else None
        load_weights(model, self.checkpoint.tensors(select))
        return model.eval()

    def close(self) -> None:
        """Stop the follower ranks, if any; the engine cannot step afterwards."""
        if self.followers is not None:
            followers, self.followers = self.followers, None
            followers.stop(self.runner)

    @property
    def kv_shards(self) -> list[KVShard]:
        """Every rank's KV pool, in rank order, for the KV transfer layer (which runs here)."""
        shards = [KVShard(0, self.pool.tensor, self.shard.kv_head_start, self.shard.num_kv_heads)]
        if self.shard.size == 1:
            return shards
        if self.followers is None or len(self.followers.pools) != self.shard.size - 1:
            raise NotImplementedError(
                "moving KV of a tensor-parallel engine on CUDA needs each rank's pool shared "
                "with rank 0 through CUDA IPC handles, which pdserve does not implement yet; "
                "use --role both, or tensor parallelism on CPU"
            )
        for rank, tensor in enumerate(self.followers.pools, start=1):
            shard = TPShard.of(self.model_config, rank, self.shard.size)
            shards.append(KVShard(rank, tensor, shard.kv_head_start, shard.num_kv_heads))
        return shards

    def _kv_layout(self) -> KVLayout:
        cfg, c = self.model_config, self.config
        shape = dict(
            num_kv_heads=self.shard.num_kv_heads,
            num_layers=cfg.num_layers,
            block_size=c.block_size,
            head_dim=cfg.head_dim,
            dtype=self.dtype,
        )
        if c.num_kv_blocks:
            return KVLayout(num_blocks=c.num_kv_blocks, **shape)
        if c.kv_cache_memory_gib:
            memory = int(c.kv_cache_memory_gib * 2**30)
        elif self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            memory = int(free * CUDA_MEMORY_FRACTION)
        else:
            memory = int(float(os.environ.get("PDSERVE_KV_GIB", DEFAULT_KV_MEMORY_GIB_CPU)) * 2**30)
        return KVLayout.blocks_for_memory(memory, **shape)

    # ---- requests in -------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        kv_source: dict | None = None,
        output_ids: list[int] | None = None,
    ) -> None:
        """Queue a request.

        `output_ids` are tokens already generated elsewhere (the prefill worker's first token,
        or everything a failed decode worker streamed); they count toward max_tokens.
        `kv_source` is where to pull the prompt's KV from; without it the prompt is computed here.
        """
        if request_id in self.requests or request_id in self.held:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        self.validate_prompt(prompt_ids, params)
        seq = Sequence(request_id, list(prompt_ids), params, time.monotonic(), kv_source=kv_source)
        if output_ids:
            if len(output_ids) >= params.max_tokens:
                raise InvalidRequestError("output_ids already reach max_tokens; nothing to do")
            bad = next((t for t in output_ids if not 0 <= t < self.model_config.vocab_size), None)
            if bad is not None:
                raise InvalidRequestError(f"output token id {bad!r} is outside the vocabulary")
            seq.token_ids.extend(int(t) for t in output_ids)
        if params.seed is not None:
            seq.generator = torch.Generator().manual_seed(params.seed)
        self.requests[request_id] = seq
        self.scheduler.add(seq)

    def validate_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise a clear error for a prompt this engine cannot serve."""
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad!r} is outside the vocabulary [0, {vocab})")
        total = len(prompt_ids) + params.max_tokens
        if total > self.max_model_len:
            limit = f"this model's maximum context length is {self.max_model_len} tokens"
            if self.max_model_len == self.layout.num_blocks * self.config.block_size:
                limit = f"this worker's KV cache holds {self.max_model_len} tokens"
            raise PromptTooLongError(
                f"{limit}, but {total} were requested ({len(prompt_ids)} in the prompt, "
                f"{params.max_tokens} to generate); shorten the prompt or lower max_tokens"
            )

    def abort(self, request_id: str) -> bool:
        """Stop a request wherever it is and free its blocks; False if it is unknown."""
        seq = self.requests.pop(request_id, None) or self.held.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq)
        self.blocks.free_seq(seq)
        seq.status, seq.finish_reason = Status.FINISHED, FinishReason.ABORT
        return True

    def release(self, request_id: str) -> bool:
        """Prefill role: the decode worker has the KV (or the lease expired); free the blocks."""
        seq = self.held.pop(request_id, None)
        if seq is None:
            return False
        self.blocks.free_seq(seq)
        return True

    def kv_arrived(self, request_id: str, ok: bool) -> None:
        """Decode role: the pull for `request_id` finished (ok) or failed (recompute here)."""
        seq = self.requests.get(request_id)
        if seq is not None and seq.status is Status.WAITING_FOR_KV:
            self.scheduler.kv_arrived(seq, ok)

    # ---- the step ----------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    def step(self, on_fetches: Callable[[list[KVFetch]], None] | None = None) -> StepResult:
        """Schedule and run one step.

        `on_fetches`, if given, receives the step's new KV fetches before the model runs, so
        their pulls overlap this step instead of starting after it; they are then left out of
        the result.
        """
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        self.num_preemptions += len(plan.preempted)
        outputs: list[RequestOutput] = []
        fetches = [
            KVFetch(
                s.request_id,
                s.kv_source or {},
                list(s.block_ids[: self.blocks.blocks_for(s.num_prompt)]),
                s.num_cached // self.blocks.block_size,
            )
            for s in plan.kv_fetches
        ]
        if fetches and on_fetches is not None:
            on_fetches(fetches)
            fetches = []
        n_joined = sum(
            1 for c in plan.chunks if c.num_tokens == 1 and c.seq.num_computed == c.seq.num_prompt
        )
        if plan.chunks:
            logits = self.runner.run(plan.chunks)
            sampling = [c.seq for c in plan.chunks if c.samples]
            tokens, logprobs = sample(logits, sampling) if sampling else ([], [])
            sampled = dict(
                zip(
                    (s.request_id for s in sampling),
                    zip(tokens, logprobs, strict=True),
                    strict=True,
                )
            )
            for chunk in plan.chunks:
                seq = chunk.seq
                seq.num_computed += chunk.num_tokens
                self.blocks.register_computed(seq)
                if seq.request_id in sampled:
                    token, lp = sampled[seq.request_id]
                    outputs.append(self._append_token(seq, token, lp))
        n_decode = sum(1 for c in plan.chunks if c.num_tokens == 1)
        return StepResult(
            outputs,
            fetches,
            plan.num_tokens - n_decode,
            n_decode,
            time.perf_counter() - t0,
            n_joined,
            torch.get_num_threads() if self.device.type == "cpu" else 0,
        )

    def _append_token(self, seq: Sequence, token: int, lp: TokenLogprobs | None) -> RequestOutput:
        seq.token_ids.append(token)
        p = seq.params
        n_out = len(seq.token_ids) - seq.num_prompt
        reason = None
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = FinishReason.STOP
        elif n_out >= p.max_tokens or len(seq.token_ids) >= self.max_model_len:
            reason = FinishReason.LENGTH
        elif self.config.role == "prefill":
            reason = FinishReason.PREFILL_DONE
        out = RequestOutput(
            seq.request_id,
            [token],
            logprobs=[lp],
            num_prompt_tokens=seq.num_prompt,
            num_cached_tokens=seq.num_cached,
            num_output_tokens=n_out,
        )
        if reason is not None:
            self.scheduler.finish(seq)
            del self.requests[seq.request_id]
            out.finished, out.finish_reason = True, reason
            seq.finish_reason = reason
            if reason is FinishReason.PREFILL_DONE:
                seq.status = Status.HELD
                self.held[seq.request_id] = seq
                out.block_ids = list(seq.block_ids)
            else:
                seq.status = Status.FINISHED
                self.blocks.free_seq(seq)
        return out

    def stats(self) -> EngineStats:
        s = self.scheduler
        queued = sum(len(q.token_ids) - q.num_computed for q in s.waiting if q.kv_source is None)
        queued += sum(q.num_uncomputed for q in s.running if q.num_uncomputed > 1)
        return EngineStats(
            num_running=len(s.running),
            num_waiting=len(s.waiting),
            num_fetching=len(s.fetching),
            num_held=len(self.held),
            queued_prefill_tokens=queued,
            free_blocks=self.blocks.num_free,
            total_blocks=self.blocks.num_blocks,
            num_preemptions=self.num_preemptions,
        )
