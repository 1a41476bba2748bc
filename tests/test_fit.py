"""Robustness of the per-segment fits and of the whole estimator to noise, repeats, outliers."""

from __future__ import annotations

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from estimator.fit import design, fit_columns
from estimator.model import Estimator
from estimator.planner import plan_points
from estimator.profile import parse_profile
from sysfs_backends.virtual.simulator import Simulator

CPU = np.array([800e3, 800e3, 2400e3, 2400e3, 1600e3])
GPU = np.array([300e6, 900e6, 300e6, 900e6, 600e6])


def truth(c, g):
    return 40_000 * 2400e3 / c + 90_000 * 900e6 / g + 30_000


def test_noisy_repeats_with_outlier_predict_unseen_pairs():
    rng = np.random.default_rng(0)
    c, g = np.repeat(CPU, 3), np.repeat(GPU, 3)
    y = truth(c, g) * rng.lognormal(0, 0.03, c.shape)
    x = design(c, g, None, 2400e3, 900e6, None)
    clean = fit_columns(x, y[:, None])[0]
    y[4] *= 3.0  # a preempted run
    coef = fit_columns(x, y[:, None])[0]
    assert np.all(coef >= 0)
    assert coef[:2] == pytest.approx([40_000, 90_000], rel=0.1)
    cg, gg = np.meshgrid(np.linspace(800e3, 2400e3, 9), np.linspace(300e6, 900e6, 7))
    xg = design(cg.ravel(), gg.ravel(), None, 2400e3, 900e6, None)
    err = np.abs(xg @ coef - truth(cg.ravel(), gg.ravel())) / truth(cg.ravel(), gg.ravel())
    assert err.max() < 0.04
    assert np.allclose(xg @ coef, xg @ clean, rtol=0.01)  # the outlier did not bend the fit


def test_outlier_tolerated_without_repeats():
    x = design(np.r_[CPU, 1200e3, 2000e3], np.r_[GPU, 450e6, 750e6], None, 2400e3, 900e6, None)
    y = x @ np.array([40_000.0, 90_000.0, 5_000.0])
    y[2] *= 2.5
    coef = fit_columns(x, y[:, None])[0]
    assert coef == pytest.approx([40_000, 90_000, 5_000], rel=0.05, abs=2_000)


def test_non_negative_even_when_data_falls_with_time():
    x = design(CPU, GPU, None, 2400e3, 900e6, None)
    y = 1e5 - 2e4 * x[:, 0]  # nonsense: faster CPU, slower segment
    assert np.all(fit_columns(x, y[:, None]) >= 0)


def test_unobserved_column_is_nan_and_sparse_column_is_constant():
    x = design(CPU, GPU, None, 2400e3, 900e6, None)
    y = np.full((5, 2), np.nan)
    y[:2, 1] = [7.0, 9.0]
    coef = fit_columns(x, y)
    assert np.isnan(coef[0]).all()
    assert coef[1].tolist() == [0.0, 0.0, 8.0]


@pytest.mark.parametrize("repeats", [1, 3])
def test_estimator_on_noisy_simulated_profile(repeats):
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    cpus, gpus = board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz
    prof = parse_profile(sim.profile(plan_points(cpus, gpus), repeats, None,
                                     np.random.default_rng(7)))
    est = Estimator.fit(prof)
    c, g = est.grid_pairs
    err = np.abs(est.latency_ms(c, g) - sim.run(c, g).latency_ns / 1e6) / (sim.run(c, g).latency_ns / 1e6)
    assert err.mean() < 0.03
    assert np.percentile(err, 95) < 0.06


def test_language_model_needs_two_contexts_and_tracks_context():
    board, spec = load_board("sd888_phone"), load_model_spec("smollm_135m")
    sim = Simulator(board, spec)
    pts = plan_points(board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz)
    with pytest.raises(ValueError, match=">= 2 distinct context_len"):
        Estimator.fit(parse_profile(sim.profile(pts, 1, [512], np.random.default_rng(1))))
    est = Estimator.fit(parse_profile(sim.profile(pts, 2, [256, 1024], np.random.default_rng(1))))
    c, g = 1_900_800.0, 607_000_000.0
    lat = [float(est.latency_ms(c, g, n)[0]) for n in (128, 2048, 4096)]
    true = [float(sim.run(c, g, n).latency_ns[0] / 1e6) for n in (128, 2048, 4096)]
    assert lat[0] < lat[1] < lat[2]
    assert np.allclose(lat, true, rtol=0.05)
    with pytest.raises(ValueError, match="give a context_len"):
        est.latency_ms(c, g)


def test_estimator_json_round_trip():
    board, spec = load_board("orin_nano"), load_model_spec("mobilenet_v2")
    sim = Simulator(board, spec)
    pts = plan_points(board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz)
    est = Estimator.fit(parse_profile(sim.profile(pts, 2, None, np.random.default_rng(2))))
    again = Estimator.from_json(est.to_json())
    assert np.array_equal(again.grid().latency_ms, est.grid().latency_ms)
    assert len(est.grid().latency_ms) == len(board.cpu.inference.frequencies_khz) * len(
        board.gpu.frequencies_hz)


def test_planner_default_is_corners_and_centre_and_grows_without_repeats():
    cpus, gpus = [1, 2, 3, 4, 5], [10, 20, 30]
    assert set(plan_points(cpus, gpus)) == {(1, 10), (1, 30), (5, 10), (5, 30), (3, 20)}
    nine = plan_points(cpus, gpus, 9)
    assert len(set(nine)) == 9
    assert len(plan_points([1, 2], [1], 10)) == 2


def test_bounded_driver_queue_detected_and_modelled():
    board = load_board("orin_nano").model_copy(deep=True)
    board.simulation.queue_depth = 4
    spec = load_model_spec("smollm_135m")
    sim = Simulator(board, spec)
    pts = plan_points(board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz)
    est = Estimator.fit(parse_profile(sim.profile(pts, 2, [256, 1024], np.random.default_rng(3))))
    assert est.data.queue_depth == 4
    c, g = est.grid_pairs
    truth = sim.run(c, g, 512).latency_ns / 1e6
    err = np.abs(est.latency_ms(c, g, 512) - truth) / truth
    assert err.mean() < 0.03
