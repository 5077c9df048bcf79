"""fastcnn-bench's per-layer thread scaling: the serial-part arithmetic and one small run."""
import numba
import numpy as np
import pytest

from fastcnn.benchmarks.scaling import amdahl, format_layer_scaling, layer_scaling, serial_seconds


def test_serial_part_from_one_and_n_threads():
    assert serial_seconds(10.0, 10.0, 2) == 10.0          # no speedup: all serial
    assert serial_seconds(10.0, 5.0, 2) == 0.0            # perfect speedup: nothing serial
    assert serial_seconds(10.0, 4.0, 4) == pytest.approx(2.0)   # 2 + 8/4 = 4
    assert serial_seconds(10.0, 12.0, 2) == 10.0          # slower with more threads: clipped
    with pytest.raises(ValueError):
        serial_seconds(1.0, 1.0, 1)


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_split_seconds_count_only_calls_split_over_threads(restore_threads):
    """The direct serial share's clock: a call run in two parts adds its wall time, a call run
    in one part (one thread, or below the grain) adds nothing."""
    import numba

    from fastcnn.kernels import _parallel
    from fastcnn.kernels.activation import relu_forward
    x = np.ones(1 << 20, np.float32)
    numba.set_num_threads(1)
    before = _parallel.split_seconds()
    relu_forward(x)
    assert _parallel.split_seconds() == before
    if numba.config.NUMBA_NUM_THREADS >= 2:
        numba.set_num_threads(2)
        relu_forward(x)
        assert _parallel.split_seconds() > before


def test_amdahl_bound():
    assert amdahl(0.0, 16) == pytest.approx(16.0)
    assert amdahl(1.0, 16) == pytest.approx(1.0)
    assert amdahl(0.075, 16) == pytest.approx(7.53, abs=0.01)


def test_layer_scaling_reports_every_part_and_a_share_in_range():
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)) for _ in range(3)]
    result = layer_scaling(batches, 2, warmup=1, rounds=2)
    names = [f"{r['name']} {r['direction']}" for r in result["rows"]]
    assert any("Dropout" in n for n in names) and any("optimizer" in n for n in names)
    assert 0.0 <= result["serial_share"] <= 1.0 and 0.0 <= result["fitted_serial_share"] <= 1.0
    assert 1.0 <= result["amdahl_speedup"] <= 16.0 and 1.0 <= result["fitted_amdahl_speedup"] <= 16.0
    assert 0.0 < result["one_thread_ms"] <= result["step_ms_n"]
    assert all(0.0 <= r["serial_ms"] <= r["ms_1"] for r in result["rows"])
    assert result["rounds"] == 2 and "Amdahl" in format_layer_scaling(result)
    with pytest.raises(ValueError, match="rounds"):
        layer_scaling(batches, 2, rounds=0)
