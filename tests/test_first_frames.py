"""What an app's first frames get: a noise margin from the spread of the profile's repeats
(estimator/repeat_noise.py, governor.margins.prior_margin) until enough frames are measured, not a
fixed 10%; and, for a language model, the next context bucket's grid computed ahead."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from estimator.model import Estimator
from governor.app import fit_on_virtual_board
from governor.config import GovernorSettings
from governor.core import STAND_IN_BUCKETS, Governor, compute_grid
from governor.correction import Correction
from governor.margins import FALLBACK_PRIOR, prior_margin
from sysfs_backends.virtual.board import VirtualBoard
from sysfs_backends.virtual.simulator import Simulator

BOARD = "sd888_phone"


def fitted(model: str, repeats: int) -> tuple[Estimator, Simulator]:
    """The estimator fitted on the virtual board from ``repeats`` runs per point, and that board's
    simulator of the model (fresh frames to hold the prior against)."""
    board = load_board(BOARD)
    return fit_on_virtual_board(board, model, repeats=repeats), Simulator(board, load_model_spec(model))


@pytest.mark.parametrize("model", ["mobilenet_v2", "yolo_tiny"])
def test_the_prior_from_repeats_holds_the_target_on_frames_it_never_saw(model):
    est, sim = fitted(model, repeats=3)
    noise = est.data.repeat_noise
    assert noise is not None and noise.dof == len(est.data.training["points"]) * 2  # 3 repeats: 2 each
    prior = prior_margin(noise.log_sd, noise.dof, 0.01)
    # frames at one point of the board with fresh noise, against the noise-free latency
    board = sim.board
    cpu = np.full(4000, float(board.domain_tables["cpu"][len(board.domain_tables["cpu"]) // 2]))
    gpu = np.full(4000, float(board.domain_tables["gpu"][len(board.domain_tables["gpu"]) // 2]))
    truth = sim.run(cpu[:1], gpu[:1], None, None).latency_ns[0]
    ratio = sim.run(cpu, gpu, None, np.random.default_rng(99)).latency_ns / truth
    late = float((ratio > prior).mean())
    assert late <= 0.02  # the miss target (1%) + 1% of frames, the governor's allowance
    assert prior < 1.05  # and a fraction of the fixed 10% it replaces
    assert prior > float(np.quantile(ratio, 0.9))  # not the body alone


def test_a_profile_without_repeats_keeps_the_fallback_and_a_set_initial_margin_wins():
    est, _ = fitted("mobilenet_v2", repeats=1)
    assert est.data.repeat_noise is None
    assert Correction(GovernorSettings(), None).spread == FALLBACK_PRIOR
    assert Correction(GovernorSettings(initial_margin=0.05), 1.02).spread == pytest.approx(1.05)
    assert Correction(GovernorSettings(), 1.02).spread == 1.02


def test_the_estimator_file_keeps_the_spread_and_the_governor_starts_from_it(tmp_path):
    est, _ = fitted("yolo_tiny", repeats=3)
    again = Estimator.from_json(est.to_json())
    assert again.data.repeat_noise == est.data.repeat_noise
    board = load_board(BOARD)
    vb = VirtualBoard(tmp_path / "b", board)
    gov = Governor(vb.backend(tmp_path / "s.json"), board, {"yolo": again}, GovernorSettings())
    gov.start()
    try:
        noise = est.data.repeat_noise
        expected = prior_margin(noise.log_sd, noise.dof, 0.01)
        d = gov.before_frame("yolo", 40.0, app="cam")
        assert gov.correction("cam", "yolo").spread == expected
        gov.after_frame(d.frame, d.predicted_ms)
        assert gov.correction("cam", "yolo").spread == expected  # one frame: still the prior
    finally:
        gov.stop()


def test_in_process_the_next_context_bucket_is_computed_in_the_background(tmp_path):
    board = load_board(BOARD)
    est, _ = fitted("smollm_135m", repeats=2)
    vb = VirtualBoard(tmp_path / "b", board)
    gov = Governor(vb.backend(tmp_path / "s.json"), board, {"llm": est}, GovernorSettings())
    gov.start()
    try:
        d = gov.before_frame("llm", 80.0, context_len=40, app="chat")  # bucket 48
        gov.after_frame(d.frame, d.predicted_ms)
        for _ in range(300):
            if gov.has_grid(("llm", 64)):
                break
            time.sleep(0.02)
        assert gov.status()["models"]["llm"]["context_buckets"] == [48, 64]
    finally:
        gov.stop()


def test_a_context_bucket_without_its_grid_is_decided_on_a_neighbours_while_its_own_is_computed(tmp_path):
    """A decoder whose context jumps a few buckets (a decoder skipping through buckets faster than
    grids are computed, a new turn's prompt) must not wait 70-150 ms for a grid: the nearest
    computed bucket within STAND_IN_BUCKETS stands in (its latencies within about a percent of
    the bucket's own), and the bucket's own grid is asked for in the background. Beyond that
    distance the frame's own grid is computed first, as before."""
    board = load_board(BOARD)
    est, _ = fitted("smollm_135m", repeats=2)
    vb = VirtualBoard(tmp_path / "b", board)
    gov = Governor(vb.backend(tmp_path / "s.json"), board, {"llm": est}, GovernorSettings())
    asked: list[tuple] = []
    gov.compute_ahead = asked.append  # what is asked for in the background, not computed here
    gov.start()
    try:
        d = gov.before_frame("llm", 80.0, context_len=40, app="chat")  # bucket 48: computed now
        gov.after_frame(d.frame, d.predicted_ms)
        assert gov.has_grid(("llm", 48)) and asked == [("llm", 64)]  # the next bucket, ahead
        d = gov.before_frame("llm", 80.0, context_len=70, app="chat")  # bucket 80: 48 stands in
        gov.after_frame(d.frame, d.predicted_ms)
        assert not gov.has_grid(("llm", 80)) and gov.has_grid(("llm", 80), stand_in=True)
        assert asked[-1] == ("llm", 80)
        own = compute_grid(*gov.grid_job(("llm", 80)))
        near = gov._grids[("llm", 48)]
        assert np.abs(near.latency_ms / own.latency_ms - 1).max() < 0.01
        assert not np.array_equal(near.latency_ms, own.latency_ms)  # a stand-in, not the same grid
        d = gov.before_frame("llm", 80.0, context_len=300, app="chat")  # bucket 304: too far, computed
        gov.after_frame(d.frame, d.predicted_ms)
        assert gov.has_grid(("llm", 304)) and gov.has_grid(("llm", 304 + STAND_IN_BUCKETS * 16), stand_in=True)
        assert not gov.has_grid(("llm", 304 + (STAND_IN_BUCKETS + 1) * 16), stand_in=True)
    finally:
        gov.stop()


def test_grids_asked_for_ahead_while_one_is_computed_leave_only_the_latest_to_compute(tmp_path, monkeypatch):
    """One grid per model is computed ahead at a time; those asked for meanwhile are not queued
    one per bucket (a decoder outrunning its grids made the queue, and a frame waiting behind it,
    grow): only the latest asked for is computed next."""
    import threading

    import governor.core as core

    board = load_board(BOARD)
    est, _ = fitted("smollm_135m", repeats=2)
    vb = VirtualBoard(tmp_path / "b", board)
    gov = Governor(vb.backend(tmp_path / "s.json"), board, {"llm": est}, GovernorSettings())
    gate, computed = threading.Event(), []
    real = core.compute_grid

    def gated(est_, board_, rank, context_len):  # the real computation, held until the test lets go
        computed.append(context_len)
        gate.wait(30)
        return real(est_, board_, rank, context_len)

    monkeypatch.setattr(core, "compute_grid", gated)
    gov.compute_ahead(("llm", 64))
    for bucket in (80, 96, 112):  # asked while 64 is computed
        gov.compute_ahead(("llm", bucket))
    gate.set()
    for _ in range(500):
        if gov.has_grid(("llm", 112)):
            break
        time.sleep(0.02)
    time.sleep(0.2)  # nothing else follows
    assert computed == [64, 112]
    assert gov.has_grid(("llm", 64)) and gov.has_grid(("llm", 112)) and not gov.has_grid(("llm", 96))
