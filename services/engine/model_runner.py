"""Tensors in, logits out: turns a step plan into one forward pass over the paged KV pool.

With tensor parallelism every rank has a runner over its own model shard and KV pool: rank 0's
runner turns the scheduler's chunks into `StepInputs`, sends them to the followers, and all
ranks run the same forward; rank 0 gets the gathered logits.
"""

from __future__ import annotations

import torch

from services.engine import step_plan_wire
from services.engine.attention import AttentionMetadata, PrefillSegment
from services.engine.config import ModelConfig
from services.engine.errors import RankFailedError
from services.engine.kv_cache import KVPool
from services.engine.model import LlamaForCausalLM
from services.engine.parallel import TPGroup
from services.engine.rope import cos_sin_table
from services.engine.scheduler import ScheduledChunk
from services.engine.step_plan_wire import StepInputs


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cfg: ModelConfig,
        pool: KVPool,
        device: torch.device,
        dtype: torch.dtype,
        max_positions: int,
        group: TPGroup | None = None,
    ):
        self.model = model
        self.pool = pool
        self.device = device
        self.group = group
        # Rank 0: True from sending a step until its forward is done. A step that failed in
        # between leaves the followers inside it, where only killing them ends their wait.
        self.mid_step = False
        self.block_size = pool.layout.block_size
        cos, sin = cos_sin_table(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_positions)
        self.cos, self.sin = cos.to(device), sin.to(device)  # float32; kernels round

    def prepare(self, chunks: list[ScheduledChunk]) -> StepInputs:
        """Flatten the chunks into token ids, positions, block tables and sample rows."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slot_blocks: list[int] = []
        segments: list[tuple[int, int, int]] = []
        prefill_tables: list[torch.Tensor] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        sample_rows: list[int] = []
        for chunk in chunks:
            seq, n = chunk.seq, chunk.num_tokens
            start = seq.num_computed
            row = len(ids)
            ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            blocks = seq.block_ids
            slot_blocks.extend(blocks[p // bs] for p in range(start, start + n))
            if n == 1:
                decode_tables.append(blocks[: (start + bs) // bs])
                decode_lens.append(start + 1)
            else:
                segments.append((row, row + n, start))
                prefill_tables.append(
                    torch.tensor(blocks[: -(-(start + n) // bs)], dtype=torch.long)
                )
            if chunk.samples:
                sample_rows.append(row + n - 1)
        tables = lens = None
        if decode_lens:
            width = max(len(t) for t in decode_tables)
            tables = torch.tensor(
                [t + [0] * (width - len(t)) for t in decode_tables], dtype=torch.long
            )
            lens = torch.tensor(decode_lens, dtype=torch.long)
        return StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slot_blocks=torch.tensor(slot_blocks, dtype=torch.long),
            prefill_segments=segments,
            prefill_tables=prefill_tables,
            decode_tables=tables,
            decode_lens=lens,
            sample_rows=sample_rows,
        )

    def metadata(self, inputs: StepInputs) -> AttentionMetadata:
        """The attention metadata of a step, on this rank's device."""
        device, bs = self.device, self.block_size
        tables = mask = lens = None
        if inputs.decode_tables is not None and inputs.decode_lens is not None:
            width = inputs.decode_tables.shape[1]
            lens = inputs.decode_lens
            mask = (torch.arange(width * bs).unsqueeze(0) < lens.unsqueeze(1))[:, None, None, :]
            tables, mask, lens = inputs.decode_tables.to(device), mask.to(device), lens.to(device)
        return AttentionMetadata(
            slot_blocks=inputs.slot_blocks.to(device),
            slot_offsets=(inputs.positions % bs).to(device),
            prefills=[
                PrefillSegment(start, end, context, table.to(device))
                for (start, end, context), table in zip(
                    inputs.prefill_segments, inputs.prefill_tables, strict=True
                )
            ],
            num_prefill_tokens=inputs.input_ids.numel() - (0 if lens is None else lens.numel()),
            decode_block_tables=tables,
            decode_context_lens=lens,
            decode_mask=mask,
        )

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Compute the chunks' KV and return float32 logits for the rows that sample."""
        inputs = self.prepare(chunks)
        if self.group is None:
            logits = self.execute(inputs)
        else:
            self.mid_step = True
            try:
                step_plan_wire.send_step(self.group, inputs)
                logits = self.execute(inputs)
            except RuntimeError as exc:  # what a collective raises when a peer is gone
                raise RankFailedError(f"a tensor-parallel rank failed: {exc}") from exc
            self.mid_step = False
        assert logits is not None  # rank 0 always gets them
        return logits

    @torch.inference_mode()
    def execute(self, inputs: StepInputs) -> torch.Tensor | None:
        """One forward over this rank's shard; the sampled rows' logits on rank 0, else None."""
        meta = self.metadata(inputs)
        positions = inputs.positions.to(self.device)
        hidden = self.model(
            inputs.input_ids.to(self.device),
            (positions, self.cos, self.sin),
            self.pool.layers,
            meta,
        )
        rows = inputs.sample_rows
        if not rows:
            return torch.empty(0, self.model.config.vocab_size)
        logits = self.model.logits(hidden[torch.tensor(rows, device=self.device)])
        return None if logits is None else logits.cpu()

    def follow(self) -> None:
        """A follower rank's life: run every step rank 0 sends, until it says stop."""
        assert self.group is not None
        while (inputs := step_plan_wire.receive_step(self.group)) is not None:
            self.execute(inputs)

    def stop_followers(self) -> None:
        """Rank 0: end the followers' loops (they exit)."""
        if self.group is not None:
            step_plan_wire.send_stop(self.group)
