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


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Keep the smallest set whose mass reaches top_p (the first token always stays).
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample(
    logits: torch.Tensor, seqs: list[Sequence]
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits [N, vocab] float32, one row per sequence -> one token id (and logprobs) each."""
    tokens = logits.argmax(dim=-1).tolist()  # greedy rows are done already
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.greedy:
            continue
        row = _filter_top_k_top_p(logits[i] / p.temperature, p.top_k, p.top_p)
        probs = row.softmax(-1)
        tokens[i] = int(torch.multinomial(probs, 1, generator=seq.generator).item())
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
