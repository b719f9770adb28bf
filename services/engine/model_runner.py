"""Tensors in, logits out: turns a step plan into one forward pass over the paged KV pool."""

from __future__ import annotations

import torch

from services.engine.attention import AttentionMetadata, PrefillSegment
from services.engine.config import ModelConfig
from services.engine.kv_cache import KVPool
from services.engine.model import LlamaForCausalLM
from services.engine.rope import cos_sin_table
from services.engine.scheduler import ScheduledChunk


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        cfg: ModelConfig,
        pool: KVPool,
        device: torch.device,
        dtype: torch.dtype,
        max_positions: int,
    ):
        self.model = model
        self.pool = pool
        self.device = device
        self.block_size = pool.layout.block_size
        cos, sin = cos_sin_table(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_positions)
        self.cos, self.sin = cos.to(device), sin.to(device)  # float32; kernels round

    def prepare(
        self, chunks: list[ScheduledChunk]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Flatten the chunks into token ids, positions, attention metadata and sample rows."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slot_blocks: list[int] = []
        prefills: list[PrefillSegment] = []
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
                table = torch.tensor(blocks[: -(-(start + n) // bs)], dtype=torch.long)
                prefills.append(PrefillSegment(row, row + n, start, table.to(self.device)))
            if chunk.samples:
                sample_rows.append(row + n - 1)
        pos = torch.tensor(positions, dtype=torch.long)
        num_prefill = len(ids) - len(decode_lens)
        tables = mask = lens = None
        if decode_lens:
            width = max(len(t) for t in decode_tables)
            tables = torch.tensor(
                [t + [0] * (width - len(t)) for t in decode_tables], dtype=torch.long
            )
            lens = torch.tensor(decode_lens, dtype=torch.long)
            mask = (torch.arange(width * bs).unsqueeze(0) < lens.unsqueeze(1))[:, None, None, :]
            tables, mask, lens = tables.to(self.device), mask.to(self.device), lens.to(self.device)
        meta = AttentionMetadata(
            slot_blocks=torch.tensor(slot_blocks, dtype=torch.long, device=self.device),
            slot_offsets=(pos % bs).to(self.device),
            prefills=prefills,
            num_prefill_tokens=num_prefill,
            decode_block_tables=tables,
            decode_context_lens=lens,
            decode_mask=mask,
        )
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            pos.to(self.device),
            meta,
            sample_rows,
        )

    @torch.inference_mode()
    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Compute the chunks' KV and return float32 logits for the rows that sample."""
        input_ids, positions, meta, rows = self.prepare(chunks)
        hidden = self.model(input_ids, (positions, self.cos, self.sin), self.pool.layers, meta)
        if not rows:
            return torch.empty(0, self.model.config.vocab_size)
        return self.model.logits(hidden[torch.tensor(rows, device=self.device)]).cpu()
