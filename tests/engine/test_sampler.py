"""Sampling draws from the requested distribution; seeds repeat; filters hold."""

from __future__ import annotations

import torch

from services.engine.sampler import sample
from services.engine.sampling_params import SamplingParams
from services.engine.sequence import Sequence


def seq(**params) -> Sequence:
    s = Sequence("s", [1, 2, 3], SamplingParams(max_tokens=5, **params), 0.0)
    if s.params.seed is not None:
        s.generator = torch.Generator().manual_seed(s.params.seed)
    return s


def draw(logits: torch.Tensor, n: int, **params) -> list[int]:
    out = []
    for _ in range(n):
        tokens, _ = sample(logits.unsqueeze(0), [seq(**params)])
        out += tokens
    return out


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    tokens, _ = sample(logits, [seq(temperature=0), seq(temperature=0)])
    assert tokens == [1, 0]


def test_sampling_follows_the_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.6, 0.3, 0.1])
    tokens = draw(probs.log(), 4000, temperature=1.0)
    freq = torch.bincount(torch.tensor(tokens), minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_top_k_and_top_p_exclude_the_tail():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert set(draw(logits, 300, top_k=2)) <= {0, 1}
    assert set(draw(logits, 300, top_p=0.7)) <= {0, 1}
    assert set(draw(logits, 300, top_p=0.5)) == {0}


def test_a_seed_repeats_its_draws_in_any_batch():
    logits = torch.randn(1, 1000)
    alone = [draw(logits[0], 1, seed=7)[0] for _ in range(3)]
    batched, _ = sample(logits.repeat(3, 1), [seq(seed=7), seq(temperature=1.0), seq(seed=7)])
    assert alone == [alone[0]] * 3
    assert batched[0] == batched[2] == alone[0]


def test_logprobs_report_the_sampled_token_and_the_top_n():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    tokens, lps = sample(logits, [seq(temperature=0, logprobs=2)])
    lp = lps[0]
    expected = torch.log_softmax(logits[0], -1)
    assert lp.token_id == tokens[0] == 0
    assert abs(lp.logprob - float(expected[0])) < 1e-6
    assert [t for t, _ in lp.top] == [0, 1]


def test_each_row_of_a_batch_follows_its_own_distribution():
    torch.manual_seed(1)
    vocab = 49152
    first = torch.full((vocab,), float("-inf"))
    first[[5, 40000]] = torch.tensor([0.25, 0.75]).log()
    second = torch.full((vocab,), float("-inf"))
    second[[0, vocab - 1]] = torch.tensor([0.5, 0.5]).log()
    counts = {5: 0, 40000: 0, 0: 0, vocab - 1: 0}
    for _ in range(1000):
        tokens, _ = sample(torch.stack([first, second]), [seq(), seq()])
        assert tokens[0] in (5, 40000) and tokens[1] in (0, vocab - 1), tokens
        counts[tokens[0]] += 1
        counts[tokens[1]] += 1
    assert abs(counts[40000] / 1000 - 0.75) < 0.05, counts
    assert abs(counts[vocab - 1] / 1000 - 0.5) < 0.05, counts


def test_top_p_keeps_the_same_nucleus_whether_it_is_narrow_or_wide():
    torch.manual_seed(2)
    narrow = torch.randn(49152) * 8  # a few tokens hold most of the mass
    wide = torch.randn(49152) * 0.1  # the nucleus spans most of the vocabulary
    for logits in (narrow, wide):
        kept = set(draw(logits, 200, top_p=0.5))
        order = logits.softmax(-1).sort(descending=True)
        before = order.values.cumsum(-1) - order.values
        nucleus = set(order.indices[before < 0.5].tolist())
        assert kept <= nucleus, sorted(kept - nucleus)[:5]
