"""Fixtures for loadgen tests: the scripted OpenAI-compatible server, in its own process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadgen.client import Endpoint, StreamClient
from loadgen.workload import Request

SERVER = Path(__file__).with_name("scripted_server.py")


async def _warm_up(url: str) -> None:
    # A process's first request pays for the HTTP stack's lazy imports (tens of ms); the CLI's
    # preflight request absorbs that, tests absorb it here so no timed request does.
    async with StreamClient(Endpoint(url, "steady/warm-up")) as client:
        await client.send(Request("warm up", 2, 2))


@pytest.fixture(scope="session")
def scripted_url() -> Iterator[str]:
    """Base URL of a running scripted server (a separate process, so its timing is its own)."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = proc.stdout.readline().strip()
        if not port:
            raise RuntimeError(f"scripted server exited with {proc.wait()}")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        asyncio.run(_warm_up(url))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def stats(scripted_url: str):
    """What the scripted server saw for one model name."""

    def get(model: str) -> dict:
        return httpx.get(f"{scripted_url}/stats/{model}", timeout=5).json()

    return get


@pytest.fixture()
def free_url() -> str:
    """A URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real byte-level BPE `tokenizer.json`, trained here on a little English text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from loadgen.corpus import TEXT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Trained on half the corpus, so the other half has words the vocabulary splits.
    tok.train_from_iterator([TEXT[: len(TEXT) // 2]], trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path
