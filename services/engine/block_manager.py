"""Paged KV block bookkeeping: free list, reference counts and the prefix cache.

A full block whose KV has been computed is registered under a chained hash of its tokens (and
every token before it), so a later request with the same prefix shares it read-only. Freed
blocks keep their hash and stay findable until the free list hands them out again, oldest
first: the prefix cache is exactly the free blocks that have not been reused yet (LRU eviction).
"""

from __future__ import annotations

from collections import OrderedDict

from services.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _chain_hash(self, prev: int | None, tokens: tuple[int, ...]) -> int:
        return hash((prev, tokens))

    def match_prefix(self, token_ids: list[int], max_tokens: int) -> list[int]:
        """Cached blocks holding the first full blocks of `token_ids`, covering <= max_tokens."""
        if not self.caching:
            return []
        hits: list[int] = []
        prev: int | None = None
        bs = self.block_size
        for i in range(max_tokens // bs):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            h = self._chain_hash(prev, tokens)
            block = self.hash_to_block.get(h)
            if block is None or self.block_tokens[block] != tokens:
                break
            hits.append(block)
            prev = h
        return hits

    def _take_free(self) -> int:
        block, _ = self.free.popitem(last=False)  # least recently freed first
        old = self.block_hash[block]
        if old is not None:  # evict it from the prefix cache
            if self.hash_to_block.get(old) == block:
                del self.hash_to_block[old]
            self.block_hash[block] = None
            self.block_tokens[block] = None
        self.ref_counts[block] = 1
        return block

    def can_allocate(self, seq: Sequence, num_tokens: int, cached: list[int] | None = None) -> bool:
        cached = cached or []
        # Cached blocks that sit in the free list are taken out of it, not newly allocated,
        # but they still reduce what is free for the rest.
        reclaimed = sum(1 for b in cached if self.ref_counts[b] == 0)
        need = self.blocks_for(num_tokens) - len(seq.block_ids) - len(cached)
        return need + reclaimed <= self.num_free

    def allocate(self, seq: Sequence, num_tokens: int, cached: list[int] | None = None) -> None:
        """Give `seq` blocks for its first `num_tokens` tokens, reusing `cached` prefix blocks."""
        for block in cached or []:
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
            seq.block_ids.append(block)
        if cached:
            seq.num_hashed_blocks = len(seq.block_ids)
        while len(seq.block_ids) < self.blocks_for(num_tokens):
            seq.block_ids.append(self._take_free())

    def free_seq(self, seq: Sequence) -> None:
        """Drop the sequence's references; blocks nobody uses go back to the free list."""
        self.free_blocks(seq.block_ids)
        seq.block_ids = []
        seq.num_hashed_blocks = 0

    def free_blocks(self, block_ids: list[int]) -> None:
        # Tail blocks first, so they are evicted before the shared prefix blocks.
        for block in reversed(block_ids):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                self.free[block] = None

    def register_computed(self, seq: Sequence) -> None:
        """Put every full, computed block of `seq` into the prefix cache."""
        if not self.caching:
            return
        bs = self.block_size
        full = min(seq.num_computed, len(seq.token_ids)) // bs
        prev = None
        if seq.num_hashed_blocks:
            prev = self.block_hash[seq.block_ids[seq.num_hashed_blocks - 1]]
        for i in range(seq.num_hashed_blocks, full):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = self._chain_hash(prev, tokens)
            block = seq.block_ids[i]
            if self.block_hash[block] is None:
                self.block_hash[block] = h
                self.block_tokens[block] = tokens
                self.hash_to_block.setdefault(h, block)
            prev = self.block_hash[block]
            seq.num_hashed_blocks = i + 1
