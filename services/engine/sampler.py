"""From last-position logits to next tokens: greedy, temperature, top-k, top-p, seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.engine.sequence import Sequence


@dataclass
class TokenLogprobs:
    """The sampled token's log-probability and the top-n alternatives (token id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def _filter_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Mask rows of logits [N, V] to their top_k (0 = all) and top_p nucleus, per row."""
    if bool((top_k > 0).any()):
        k = torch.where(top_k > 0, top_k, logits.shape[-1]).clamp(max=logits.shape[-1])
        kth = torch.topk(logits, int(k.max())).values.gather(-1, (k - 1).unsqueeze(-1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    active = top_p < 1.0
    if bool(active.any()):
        logits = logits.clone()
        logits[active] = _filter_top_p(logits[active], top_p[active])
    return logits


# A nucleus usually holds a few tokens: look for it among this many before sorting a whole row.
# Sorting a 49k vocabulary costs 2.7 ms a row here, the top 256 about 0.15.
NUCLEUS_CANDIDATES = 256


def _filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep each row's smallest set of top tokens whose probability mass reaches top_p."""
    probs = logits.softmax(-1)
    k = min(NUCLEUS_CANDIDATES, logits.shape[-1])
    top, order = probs.topk(k)  # descending
    # A token stays while the mass before it is below top_p (so the first always stays).
    drop = top.cumsum(-1) - top >= top_p.unsqueeze(-1)
    found = drop.any(-1) | (k == logits.shape[-1])
    out = torch.full_like(logits, float("-inf"))
    if bool(found.any()):
        kept = logits.gather(-1, order).masked_fill(drop, float("-inf"))
        out[found] = out[found].scatter(-1, order[found], kept[found])
    if not bool(found.all()):  # a flat row: its nucleus is wider than the candidates
        rest = ~found
        sorted_probs, full_order = probs[rest].sort(descending=True)
        full_drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p[rest].unsqueeze(-1)
        kept = logits[rest].gather(-1, full_order).masked_fill(full_drop, float("-inf"))
        out[rest] = out[rest].scatter(-1, full_order, kept)
    return out


def sample(
    logits: torch.Tensor, seqs: list[Sequence]
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits [N, vocab] float32, one row per sequence -> one token id (and logprobs) each."""
    tokens = [0] * len(seqs)
    greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
    rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if greedy:
        # max(-1) finds the same first maximum as argmax, three times faster on this CPU.
        best = (logits if len(greedy) == len(seqs) else logits[greedy]).max(-1).indices
        for i, token in zip(greedy, best.tolist(), strict=True):
            tokens[i] = token
    if rows:
        params = [seqs[i].params for i in rows]
        scaled = logits[rows] / torch.tensor([p.temperature for p in params]).unsqueeze(-1)
        scaled = _filter_top_k_top_p(
            scaled,
            torch.tensor([p.top_k for p in params]),
            torch.tensor([p.top_p for p in params]),
        )
        probs = scaled.softmax(-1)
        # Inverse-CDF draw: one uniform per row, found in the row's cumulative distribution.
        # Drawing one exponential per vocabulary entry instead (the race argmax p / E) made
        # the sampler cost 1.0-1.3 ms a row here, the largest per-sequence cost of a decode
        # step; this way it costs 0.2-0.4 (bench/sampler_cost.py).
        # The sum runs in float64 so that even tokens far below float32's resolution of 1.0
        # keep their share. Seeded rows draw their uniform from their own generator.
        cdf = probs.cumsum(-1, dtype=torch.float64)
        uniform = torch.empty(len(rows), 1, dtype=torch.float64)
        unseeded = [j for j, i in enumerate(rows) if seqs[i].generator is None]
        if unseeded:
            uniform[unseeded] = torch.rand(len(unseeded), 1, dtype=torch.float64)
        for j, i in enumerate(rows):
            if seqs[i].generator is not None:
                uniform[j] = torch.rand(1, dtype=torch.float64, generator=seqs[i].generator)
        total = cdf[:, -1:]
        # The first entry whose running sum passes u * total: a token of zero probability
        # repeats the sum before it, so it is never the first to pass. The target stays below
        # the total, so some token always passes it.
        target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
        picks = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        for j, token in zip(rows, picks.tolist(), strict=True):
            tokens[j] = token
    logprobs: list[TokenLogprobs | None] = [None] * len(seqs)
    wanted = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    if wanted:
        lp = torch.log_softmax(logits[wanted], dim=-1)
        for row, i in enumerate(wanted):
            n = seqs[i].params.logprobs or 0
            top = torch.topk(lp[row], n) if n else None
            logprobs[i] = TokenLogprobs(
                token_id=tokens[i],
                logprob=float(lp[row, tokens[i]]),
                top=[]
                if top is None
                else list(zip(top.indices.tolist(), top.values.tolist(), strict=True)),
            )
    return tokens, logprobs
