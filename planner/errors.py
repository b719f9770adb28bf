"""Errors the planner raises for input a user can fix; the CLI prints their message on one line."""

from __future__ import annotations


class PlannerError(Exception):
    """Base of every planner error; the message says what is wrong and how to fix it."""


class UnknownModelError(PlannerError):
    """The model is neither a known name nor a readable Hugging Face config.json."""


class UnknownGpuError(PlannerError):
    """The GPU name is not in the catalog."""


class WorkloadError(PlannerError):
    """The workload spec or dataset file cannot be used."""


class ProfileError(PlannerError):
    """A latency profile or measurements file is malformed or lacks the model asked for."""


class InfeasibleError(PlannerError):
    """No configuration can run the model on the cluster (memory, profile coverage, GPUs)."""


class SloUnreachableError(PlannerError):
    """Every configuration fits, but none meets the latency targets even with no load."""
