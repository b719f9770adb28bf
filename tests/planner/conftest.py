"""Fixtures for the planner tests: DistServe's OPT profile on A100s and small request samples."""

from __future__ import annotations

import pytest

from planner.arrivals import unit_gaps
from planner.cluster import Cluster
from planner.fitted_profile import BUNDLED_PROFILE, bundled_data_path, load_profile
from planner.goodput import Sample, Slo
from planner.gpu_catalog import get_gpu
from planner.memory import EngineLimits, MemoryModel, load_distserve_capacity
from planner.model_catalog import load_model
from planner.worker import Context
from planner.workload import load_workload

SHAREGPT_LIKE = "synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2"


@pytest.fixture(scope="session")
def opt13b():
    return load_model("facebook/opt-13b")


@pytest.fixture(scope="session")
def distserve_13b(opt13b):
    return load_profile(bundled_data_path(BUNDLED_PROFILE), [opt13b.name])


def _sample(n: int = 150, seed: int = 0, spec: str = SHAREGPT_LIKE,
                max_context: int = 2048) -> Sample:
    requests = load_workload(spec).sample(n, seed, max_context)
    return Sample(requests.prompt_lens, requests.output_lens, unit_gaps(n, "poisson", 1.0, seed))


def _context(model, latency, nodes: int = 1, gpus_per_node: int = 4,
             slo: Slo | None = None, sample: Sample | None = None,
             network_gbps: float = 25) -> Context:
    cluster = Cluster(get_gpu("a100-80g-sxm"), nodes, gpus_per_node, network_gbps)
    # At most 64 sequences per batch keeps decode simulations short (see goodput.long_enough).
    return Context(model, cluster, latency, EngineLimits(max_num_seqs=64),
                   slo or Slo(0.25, 0.1, 0.9), sample or _sample())


def _memory(context: Context) -> MemoryModel:
    return MemoryModel(context.model, context.cluster.gpu, context.limits,
                       load_distserve_capacity(context.model.name), "DistServe's capacity table")


@pytest.fixture
def make_sample():
    """make_sample(n, seed, spec, max_context): requests with unit-rate Poisson gaps."""
    return _sample


@pytest.fixture
def make_context():
    """make_context(model, latency, nodes, gpus_per_node, slo, sample, network_gbps)."""
    return _context


@pytest.fixture
def distserve_memory():
    """distserve_memory(context): memory model with DistServe's measured KV capacities."""
    return _memory


@pytest.fixture(scope="session")
def small_plan(opt13b, distserve_13b):
    """(result, context) of a quick search: OPT-13B on 1 x 4 A100s, DistServe's chatbot SLOs,
    recommending the disaggregated plan (--deployment disaggregated)."""
    from planner.search import SearchSettings, search

    context = _context(opt13b, distserve_13b, 1, 4, sample=_sample(80))
    return search(context, _memory(context), SearchSettings(deployment="disaggregated")), context


@pytest.fixture(scope="session")
def colocated_plan(opt13b, distserve_13b):
    """(result, context) of the same search left to choose: colocated workers with chunked
    prefill serve more per GPU there, so it recommends them."""
    from planner.search import SearchSettings, search

    context = _context(opt13b, distserve_13b, 1, 4, sample=_sample(80))
    result = search(context, _memory(context), SearchSettings())
    assert result.deployment == "colocated"
    return result, context
