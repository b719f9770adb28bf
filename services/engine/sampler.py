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
    if bool((top_p < 1.0).any()):
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # Keep the smallest set whose mass reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs >= top_p.unsqueeze(-1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample(
    logits: torch.Tensor, seqs: list[Sequence]
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits [N, vocab] float32, one row per sequence -> one token id (and logprobs) each."""
    tokens = logits.argmax(dim=-1).tolist()  # greedy rows are done already
    rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if rows:
        params = [seqs[i].params for i in rows]
        scaled = logits[rows] / torch.tensor([p.temperature for p in params]).unsqueeze(-1)
        scaled = _filter_top_k_top_p(
            scaled,
            torch.tensor([p.top_k for p in params]),
            torch.tensor([p.top_p for p in params]),
        )
        probs = scaled.softmax(-1)
        # Sampling by an exponential race (argmax of p / E, E ~ Exp(1)) draws from each row's
        # distribution in one batched op; seeded rows draw their noise from their own generator.
        noise = torch.empty_like(probs)
        unseeded = [j for j, i in enumerate(rows) if seqs[i].generator is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[-1]).exponential_()
        for j, i in enumerate(rows):
            if seqs[i].generator is not None:
                noise[j].exponential_(generator=seqs[i].generator)
        for j, token in zip(rows, (probs / noise).argmax(-1).tolist(), strict=True):
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
