"""The engine against transformers: same tokens, same logits."""

from __future__ import annotations

import pytest
import torch

from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.sampling_params import SamplingParams
from tests.engine.conftest import write_tiny_checkpoint

PROMPT_LENGTHS = [3, 17, 31, 64, 100, 129, 200, 257]


def make_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def engine_greedy(engine: LLMEngine, prompts: list[list[int]], n: int) -> list[list[int]]:
    """All prompts in one batch; returns each request's generated ids."""
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"greedy-{i}", p, params)
    out: dict[str, list[int]] = {f"greedy-{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for o in engine.step().outputs:
            out[o.request_id] += o.new_token_ids
    assert engine.blocks.num_used == 0 or engine.config.enable_prefix_caching
    return [out[f"greedy-{i}"] for i in range(len(prompts))]


@torch.no_grad()
def reference_greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
        outs.append(gen[0, len(p) :].tolist())
    return outs


@torch.no_grad()
def engine_prompt_logits(engine: LLMEngine, prompt: list[int]) -> torch.Tensor:
    """Last-position logits of the prompt, computed by the engine's own runner."""
    from services.engine.scheduler import ScheduledChunk
    from services.engine.sequence import Sequence

    seq = Sequence("logits", list(prompt), SamplingParams(max_tokens=1), 0.0)
    engine.blocks.allocate(seq, len(prompt))
    try:
        return engine.runner.run([ScheduledChunk(seq, len(prompt))])[0]
    finally:
        engine.blocks.free_seq(seq)


def assert_matches_reference(engine: LLMEngine, model, vocab: int) -> None:
    prompts = make_prompts(vocab)
    ours = engine_greedy(engine, prompts, 32)
    theirs = reference_greedy(model, prompts, 32)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a == b, f"prompt {i} ({len(prompts[i])} tokens) diverges"
    for p in prompts:
        ref = model(torch.tensor([p])).logits[0, -1].float()
        got = engine_prompt_logits(engine, p)
        assert torch.allclose(got, ref, atol=1e-3, rtol=0), (got - ref).abs().max()


def test_smollm2_gguf_matches_transformers(smollm2_engine, smollm2_reference):
    assert_matches_reference(smollm2_engine, smollm2_reference, 49152)


@pytest.mark.parametrize(
    "arch,overrides",
    [
        ("llama", {}),
        ("qwen2", {}),
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
    ],
    ids=["llama-gqa-untied", "qwen2-bias", "llama3-rope-scaling"],
)
def test_tiny_checkpoint_matches_transformers(tmp_path, arch, overrides):
    from transformers import AutoModelForCausalLM

    directory = write_tiny_checkpoint(tmp_path, arch, **overrides)
    reference = AutoModelForCausalLM.from_pretrained(
        str(directory), torch_dtype=torch.float32
    ).eval()
    engine = LLMEngine(EngineConfig(model=str(directory), dtype="float32", num_kv_blocks=256))
    assert_matches_reference(engine, reference, 49152)
