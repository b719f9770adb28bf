"""Optional end-to-end checksum of a transfer (CRC-32 over the bytes in order), for debugging.

Both sides hash their own views of the same bytes: the holder before sending, the fetcher
after receiving. On CPU the hash reads the pool memory in place; a pool on another device is
copied to host first, which is why this is a debugging mode and off by default.
"""

from __future__ import annotations

import zlib

import torch


def crc32_of(spans: list[torch.Tensor]) -> int:
    """CRC-32 of the concatenated bytes of ``spans`` (uint8 views)."""
    crc = 0
    for span in spans:
        host = span if span.device.type == "cpu" else span.cpu()
        crc = zlib.crc32(memoryview(host.numpy()), crc)
    return crc
