"""A step's inputs as rank 0 sends them to the follower ranks: two int64 tensors, no pickle.

Each step rank 0 broadcasts a fixed-size header, then one flat payload whose length the header
gives. The header's first entry says whether a step follows or the followers must stop.

    header  [op, tokens T, prefill segments P, decode rows B, decode table width W,
             sample rows S, prefill table entries E]
    payload token ids [T] | positions [T] | slot blocks [T] |
            per segment (start, end, context_len, table length) [4P] | prefill tables [E] |
            decode block tables [B*W] | decode context lengths [B] | sample rows [S]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.engine.parallel import TPGroup

OP_STOP, OP_STEP = 0, 1
HEADER_LEN = 7


@dataclass
class StepInputs:
    """One step as every rank needs it, in int64 CPU tensors (rank 0's runner builds it)."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_blocks: torch.Tensor  # [T] block id of each new token
    prefill_segments: list[tuple[int, int, int]]  # (start row, end row, context_len)
    prefill_tables: list[torch.Tensor]  # one block table per segment
    decode_tables: torch.Tensor | None  # [B, W], padded with block 0
    decode_lens: torch.Tensor | None  # [B]
    sample_rows: list[int]  # rows whose logits rank 0 samples from


def encode(inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(header, payload) for a step."""
    segments = torch.tensor(
        [
            (start, end, context, len(table))
            for (start, end, context), table in zip(
                inputs.prefill_segments, inputs.prefill_tables, strict=True
            )
        ],
        dtype=torch.long,
    ).reshape(-1)
    tables = inputs.decode_tables
    parts = [
        inputs.input_ids,
        inputs.positions,
        inputs.slot_blocks,
        segments,
        *inputs.prefill_tables,
    ]
    if tables is not None and inputs.decode_lens is not None:
        parts += [tables.reshape(-1), inputs.decode_lens]
    parts.append(torch.tensor(inputs.sample_rows, dtype=torch.long))
    header = torch.tensor(
        [
            OP_STEP,
            inputs.input_ids.numel(),
            len(inputs.prefill_segments),
            0 if tables is None else tables.shape[0],
            0 if tables is None else tables.shape[1],
            len(inputs.sample_rows),
            sum(t.numel() for t in inputs.prefill_tables),
        ],
        dtype=torch.long,
    )
    return header, torch.cat(parts)


def decode(header: torch.Tensor, payload: torch.Tensor) -> StepInputs:
    """The StepInputs that ``encode`` turned into (header, payload)."""
    _, t, p, b, w, s, e = header.tolist()
    ids, positions, slots, segments, tables, decode_tables, lens, rows = payload.split(
        [t, t, t, 4 * p, e, b * w, b, s]
    )
    seg_rows = segments.view(p, 4).tolist()
    prefill_tables = list(tables.split([n for *_, n in seg_rows])) if p else []
    return StepInputs(
        input_ids=ids,
        positions=positions,
        slot_blocks=slots,
        prefill_segments=[(start, end, context) for start, end, context, _ in seg_rows],
        prefill_tables=prefill_tables,
        decode_tables=decode_tables.view(b, w) if b else None,
        decode_lens=lens if b else None,
        sample_rows=rows.tolist(),
    )


def payload_len(header: torch.Tensor) -> int:
    _, t, p, b, w, s, e = header.tolist()
    return 3 * t + 4 * p + e + b * w + b + s


def send_step(group: TPGroup, inputs: StepInputs) -> None:
    """Rank 0: tell the followers what this step computes."""
    header, payload = encode(inputs)
    group.broadcast_plan(header)
    group.broadcast_plan(payload)


def send_stop(group: TPGroup) -> None:
    """Rank 0: tell the followers to exit their loop."""
    group.broadcast_plan(torch.zeros(HEADER_LEN, dtype=torch.long))


def receive_step(group: TPGroup) -> StepInputs | None:
    """Followers: the next step's inputs, or None when rank 0 says stop."""
    header = group.broadcast_plan(torch.empty(HEADER_LEN, dtype=torch.long))
    if int(header[0]) == OP_STOP:
        return None
    payload = group.broadcast_plan(torch.empty(payload_len(header), dtype=torch.long))
    return decode(header, payload)
