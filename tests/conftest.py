"""Shared fixtures: the real SmolLM2 engine and tiny random checkpoints written by transformers."""

from __future__ import annotations

import os

import torch

# Two workers share two cores in most tests; one thread each keeps them from fighting.
torch.set_num_threads(int(os.environ.get("PDSERVE_TEST_THREADS", "2")))
