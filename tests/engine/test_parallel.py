"""Tensor parallelism with Gloo on CPU: the same greedy tokens as one rank, clear refusals of
sizes that cannot work (before any weight is read), and follower ranks that never outlive or
silently break the engine."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.engine.checkpoint import resolve
from services.engine.config import EngineConfig
from services.engine.engine import LLMEngine
from services.engine.errors import ParallelConfigError, RankFailedError
from services.engine.parallel import check_tensor_parallel
from services.engine.sampling_params import SamplingParams
from tests.engine.conftest import write_tiny_checkpoint
from tests.engine.test_correctness import engine_greedy, engine_prompt_logits, make_prompts

VOCAB = 49152


def tp_engine(model: str, tp: int, **overrides) -> LLMEngine:
    config = dict(dtype="float32", num_kv_blocks=256, threads=1, tensor_parallel_size=tp)
    return LLMEngine(EngineConfig(model=model, **(config | overrides)))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def my_follower_ranks() -> list[int]:
    """Live follower-rank processes this test process started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # not a process, or gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"services.engine.tp_worker" in cmdline:
            found.append(int(entry.name))
    return [pid for pid in found if alive(pid)]


@pytest.fixture(scope="module")
def tiny_gqa(tmp_path_factory) -> Path:
    """8 query heads and 4 KV heads (4 and 2 per rank at TP=2)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-8-4"), num_key_value_heads=4)


@pytest.mark.parametrize("kv_heads", [4, 1], ids=["kv-heads-split", "kv-head-replicated"])
def test_tp2_greedy_equals_tp1_on_a_tiny_llama(tmp_path, kv_heads: int) -> None:
    directory = write_tiny_checkpoint(tmp_path, num_key_value_heads=kv_heads)
    prompts = make_prompts(VOCAB)  # 3..257 tokens: chunked prefill and mixed batches
    one = tp_engine(str(directory), 1, max_num_batched_tokens=256)
    two = tp_engine(str(directory), 2, max_num_batched_tokens=256)
    assert len(my_follower_ranks()) == 1
    try:
        assert two.layout.num_kv_heads == max(1, kv_heads // 2)
        assert engine_greedy(two, prompts, 24) == engine_greedy(one, prompts, 24)
        for prompt in prompts[:3]:
            got, want = engine_prompt_logits(two, prompt), engine_prompt_logits(one, prompt)
            assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
        assert two.group is not None and two.group.all_reduces > 0
    finally:
        two.close()
    assert not my_follower_ranks()


def test_smollm2_tp3_greedy_equals_tp1(smollm2_engine: LLMEngine) -> None:
    prompts = make_prompts(VOCAB)[:5]
    three = tp_engine("smollm2", 3)
    followers = list(three.followers.procs) if three.followers else []
    try:
        assert three.layout.num_kv_heads == 1 and three.model.shard.num_heads == 3
        assert engine_greedy(three, prompts, 8) == engine_greedy(smollm2_engine, prompts, 8)
    finally:
        three.close()
    assert len(followers) == 2 and all(p.returncode == 0 for p in followers)


def test_a_size_that_does_not_divide_the_heads_is_refused_before_any_weight(tiny_gqa, tmp_path):
    # The weights are unreadable: only a check that runs before loading can answer.
    directory = tmp_path / "no-weights"
    directory.mkdir()
    (directory / "config.json").write_bytes((tiny_gqa / "config.json").read_bytes())
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ParallelConfigError) as refused:
        tp_engine(str(directory), 3)
    assert "8 attention heads do not split evenly over 3 ranks" in str(refused.value)
    assert "sizes that fit: 1, 2, 4, 8" in str(refused.value)
    with pytest.raises(ParallelConfigError, match="9 attention heads"):
        tp_engine("smollm2", 2)


def test_more_ranks_than_devices(tiny_gqa, caplog) -> None:
    visible = torch.cuda.device_count()
    with pytest.raises(ParallelConfigError, match=f"needs {visible + 2} GPUs.*{visible}"):
        tp_engine(str(tiny_gqa), visible + 2, device="cuda")
    # On CPU the ranks may share cores; that only earns a warning.
    cores = len(os.sched_getaffinity(0))
    config = resolve(str(tiny_gqa)).config
    with caplog.at_level(logging.WARNING, logger="pdserve.engine"):
        check_tensor_parallel(8, config, torch.device("cpu"))
    assert (f"exceeds the {cores} CPU cores" in caplog.text) == (cores < 8)


def test_a_rank_that_cannot_load_its_shard_fails_the_engine_with_its_reason(
    tiny_gqa, tmp_path
) -> None:
    """Rank 0's columns of o_proj are intact, rank 1's are cut off: only rank 1 can fail."""
    directory = tmp_path / "half-o-proj"
    directory.mkdir()
    for f in tiny_gqa.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    weights = load_file(directory / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    weights[name] = weights[name][:, :32].clone()
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(RankFailedError, match=r"rank 1 failed to start: WeightError.*o_proj"):
        tp_engine(str(directory), 2)
    assert not my_follower_ranks()


def test_a_follower_that_dies_fails_the_next_step_instead_of_hanging(tiny_gqa) -> None:
    engine = tp_engine(str(tiny_gqa), 2)
    try:
        (follower,) = engine.followers.procs if engine.followers else []
        follower.send_signal(signal.SIGKILL)
        follower.wait()
        engine.add_request("r", [5, 6, 7], SamplingParams(max_tokens=2))
        with pytest.raises(RankFailedError, match="tensor-parallel rank failed"):
            engine.step()
    finally:
        engine.close()
