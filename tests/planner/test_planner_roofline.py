"""The analytic model against DistServe's measurements and against physics."""

from __future__ import annotations

import pytest

from planner.cluster import Cluster
from planner.fitted_profile import BUNDLED_PROFILE, bundled_data_path, load_profile
from planner.gpu_catalog import get_gpu
from planner.model_catalog import load_model
from planner.roofline import Calibration, RooflineLatencyModel

A100 = Cluster(get_gpu("a100-80g-sxm"), 4, 8, 25)


@pytest.mark.parametrize(("name", "tps"), [("facebook/opt-13b", [1, 2, 4]),
                                           ("facebook/opt-66b", [2, 3, 4, 8])])
def test_roofline_stays_near_distserves_measured_fit(name, tps):
    model = load_model(name)
    roofline = RooflineLatencyModel(model, A100)
    measured = load_profile(bundled_data_path(BUNDLED_PROFILE), [name])
    for tp in tps:
        r, m = roofline.timing(tp, 1), measured.timing(tp, 1)
        for length in (512, 2048):
            ratio = r.prefill_ms(length, length**2) / m.prefill_ms(length, length**2)
            assert 0.6 < ratio < 1.35, (tp, length, ratio)
        for batch in (1, 32, 128):
            ratio = r.decode_ms(batch, batch * 900) / m.decode_ms(batch, batch * 900)
            assert 0.55 < ratio < 1.35, (tp, batch, ratio)


def test_prefill_attention_is_quadratic_in_length():
    timing = RooflineLatencyModel(load_model("Llama-3.1-8B"), Cluster(get_gpu("h100"), 1, 8, 400)
                                  ).timing(1, 1)
    # Same token count, one long prompt versus many short ones: the long one costs more.
    assert timing.prefill_ms(32768, 32768**2) > 1.3 * timing.prefill_ms(32768, 32 * 1024**2)


def test_more_tensor_parallelism_is_faster_and_bandwidth_bounds_decode():
    model = RooflineLatencyModel(load_model("Llama-3.1-70B"), Cluster(get_gpu("h100"), 1, 8, 400))
    times = [model.timing(tp, 1).prefill_ms(4096, 4096**2) for tp in (2, 4, 8)]
    assert times[0] > times[1] > times[2]
    decode = model.timing(4, 1)
    assert decode.decode_ms(64, 64 * 8000) > decode.decode_ms(64, 64 * 1000)
    slow_memory = RooflineLatencyModel(load_model("Llama-3.1-70B"), model.cluster,
                                       Calibration(bandwidth_efficiency=0.35)).timing(4, 1)
    assert slow_memory.decode_ms(8, 8000) > 1.8 * decode.decode_ms(8, 8000) - 10


def test_faster_gpu_is_faster():
    model = load_model("Llama-3.1-8B")
    l4 = RooflineLatencyModel(model, Cluster(get_gpu("l4"), 1, 8, 100)).timing(1, 1)
    h100 = RooflineLatencyModel(model, Cluster(get_gpu("h100"), 1, 8, 400)).timing(1, 1)
    assert l4.decode_ms(16, 16 * 1000) > 5 * h100.decode_ms(16, 16 * 1000)
    assert l4.prefill_ms(2048, 2048**2) > 5 * h100.prefill_ms(2048, 2048**2)
