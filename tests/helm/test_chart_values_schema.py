"""values.schema.json makes a wrong value fail at install, before anything reaches the cluster,
with a message that names the offending key."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

REJECTED = {
    "negative prefill replicas": ({"prefill": {"replicas": -1}}, "/prefill/replicas"),
    "negative decode replicas": ({"decode": {"replicas": -2}}, "/decode/replicas"),
    "negative router replicas": ({"router": {"replicas": -1}}, "/router/replicas"),
    "negative colocated replicas": ({"colocated": {"replicas": -1}}, "/colocated/replicas"),
    "colocated pipeline parallelism": ({"colocated": {"pipelineParallelSize": 2}},
                                       "/colocated/pipelineParallelSize"),
    # A both-role worker has no KV listener: a KV port is a mistake, not a setting.
    "colocated kv port": ({"colocated": {"ports": {"http": 8100, "kv": 8200}}},
                          "/colocated/ports"),
    "prefill without a kv port": ({"prefill": {"ports": {"http": 8100, "kv": None}}},
                                  "/prefill/ports"),
    "tensor parallel size 0": ({"prefill": {"tensorParallelSize": 0}},
                               "/prefill/tensorParallelSize"),
    "fractional tensor parallel size": ({"decode": {"tensorParallelSize": 1.5}},
                                        "/decode/tensorParallelSize"),
    "pipeline parallelism": ({"decode": {"pipelineParallelSize": 2}},
                             "/decode/pipelineParallelSize"),
    "unknown kv backend": ({"kvTransfer": {"backend": "nccl"}}, "/kvTransfer/backend"),
    # In a values file, `source: null` deletes the default: the model source is then missing.
    "missing model source": ({"model": {"source": None}}, "/model"),
    "unknown model source": ({"model": {"source": "s3"}}, "/model/source"),
    "huggingface without a repo id": ({"model": {"source": "huggingface"}}, "/model/name"),
    "pvc without a claim": ({"model": {"source": "pvc", "pvc": {"path": "m"}}},
                            "/model/pvc/claimName"),
    "unknown placement": ({"placement": {"affinity": "medium"}}, "/placement/affinity"),
    "misspelled key": ({"prefill": {"tensorParallelSise": 2}}, "tensorParallelSise"),
    "unknown dtype": ({"engine": {"dtype": "int4"}}, "/engine/dtype"),
    "external redis without url": ({"redis": {"enabled": False}}, "/redis/external"),
    "api key with a comma": ({"auth": {"apiKeys": ["a,b"]}}, "/auth/apiKeys/0"),
    "route without a gateway": ({"router": {"httpRoute": {"enabled": True}}},
                                "/router/httpRoute/parentRefs"),
}


@pytest.mark.parametrize("values,where", REJECTED.values(), ids=REJECTED.keys())
def test_install_fails_on_a_wrong_value(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as schema_error:
        chart.validate_schema(values)
    assert where in str(schema_error.value)
    # The same values stop an install: rendering is what `helm install` does first.
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name="pdserve", namespace="llm", is_install=True)


def test_lint_reports_a_wrong_value_as_an_error(chart_dir):
    report = helm.lint(chart_dir, {"decode": {"tensorParallelSize": 0}})
    errors = [m for m in report["messages"] if m["severity"] == 3]
    assert errors and any("/decode/tensorParallelSize" in m["error"] for m in errors)


@pytest.mark.parametrize("name", ["values.yaml", "values-cpu.yaml", "values-gpu.yaml"])
def test_shipped_values_files_pass(chart, chart_dir, name):
    chart.validate_schema(yaml.safe_load((chart_dir / name).read_text()))


def test_plan_values_pass(chart, plan_values, colocated_plan_values):
    chart.validate_schema(plan_values)
    chart.validate_schema(colocated_plan_values)


def test_every_pool_accepts_zero_replicas(chart):
    chart.validate_schema({role: {"replicas": 0} for role in ("prefill", "decode", "colocated")})


def test_nullable_engine_limits_accept_numbers_and_null(chart):
    chart.validate_schema({"decode": {"maxNumSeqs": 256, "kvCacheMemoryGiB": 12.5},
                           "prefill": {"maxNumSeqs": None}, "engine": {"maxModelLen": None}})
