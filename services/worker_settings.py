"""Everything a worker is told at start, as one value (built from the command line)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.engine.config import EngineConfig


WILDCARD_HOSTS = ("", "0.0.0.0", "::")
DEFAULT_MAX_QUEUED_REQUESTS = 128


@dataclass
class WorkerSettings:
    """One worker's configuration; ``port``/``kv_port`` 0 pick free ports."""

    role: str  # prefill | decode | both
    model: str = "smollm2"
    served_model_name: str | None = None
    host: str = "0.0.0.0"
    port: int = 8100
    kv_port: int = 8200
    advertise_host: str | None = None
    registry: str = "memory"
    worker_id: str | None = None
    tensor_parallel_size: int = 1
    dtype: str = "bfloat16"
    device: str = "auto"
    threads: int | None = None
    kv_backend: str = "ucx"
    block_size: int = 16
    kv_cache_memory_gib: float | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    max_model_len: int | None = None
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    kv_lease_seconds: float = 30.0
    kv_pull_timeout: float = 30.0
    step_log: str | None = None  # append one JSON line per engine step here
    share_cores: str | None = None  # lock file shared with this worker's prefill/decode partner

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    def engine_config(self) -> EngineConfig:
        # Imported on use: it pulls in torch, which `--help` and flag errors should not wait for.
        from services.engine.config import EngineConfig

        return EngineConfig(
            model=self.model,
            role=self.role,
            dtype=self.dtype,
            device=self.device,
            threads=self.threads,
            block_size=self.block_size,
            kv_cache_memory_gib=self.kv_cache_memory_gib,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            tensor_parallel_size=self.tensor_parallel_size,
        )

    def public_host(self) -> str:
        """The address peers use: --advertise-host, else the bound address, else our IP."""
        if self.advertise_host:
            return self.advertise_host
        if self.host not in WILDCARD_HOSTS:
            return self.host
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
