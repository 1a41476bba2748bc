"""Online power learning (governor/power_online.py): the governor runs frames on a virtual phone whose
battery follows power tables other than its config's (``simulation.true_power_scale``), learns the
scales from the battery's coulomb counter, and then picks points that are truly cheaper. Also: the
fit's gate and bounds, the offset (intercept), status/top, and run records with power samples."""

from __future__ import annotations

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from governor.app import fit_on_virtual_board
from governor.config import GovernorSettings
from governor.core import Governor, compute_grid
from governor.power_online import PowerLearner
from governor.recording import RunRecorder, header_for, read_run
from governor.top import plain_line, screen, snapshot
from sysfs_backends.virtual.board import VirtualBoard

TRUE_SCALE = {"cpu": 0.6, "gpu": 1.8}  # the config's GPU table is far too cheap, its CPU table too dear
DEADLINES_MS = (14.0, 17.0, 20.0, 25.0)


@pytest.fixture(scope="module")
def phone():
    cfg = load_board("sd888_phone").model_copy(deep=True)
    cfg.simulation.true_power_scale = dict(TRUE_SCALE)
    return cfg, fit_on_virtual_board(cfg, "yolo_tiny")


def governed_run(tmp_path, cfg, est, learn: bool, frames: int, recorder_path=None) -> dict:
    """Frames through an in-process governor, deadlines changing every 40 frames; the battery is
    sampled every 16 frames, so that the run does not depend on the machine's speed. Returns status
    at the end and the measured energy per frame
    over the second half (from the governor's own rail totals)."""
    vb = VirtualBoard(tmp_path / f"board-{learn}", cfg)
    gov = Governor(vb.backend(tmp_path / f"saved-{learn}.json"), cfg, {"yolo_tiny": est},
                   GovernorSettings(power_learning=learn, state_refresh_s=3600))
    if recorder_path is not None:
        gov.recorder = RunRecorder(recorder_path, header_for(cfg, ["yolo_tiny"], "virtual"))
    sim = vb.simulator(load_model_spec("yolo_tiny"))
    rng = np.random.default_rng(1)
    with gov:
        for i in range(frames):
            if i % 16 == 0:  # the rail sampled every 16 frames (the daemon: every state_refresh_s)
                gov.refresh()
            if i == frames // 2:
                half = gov.status()
            d = gov.before_frame("yolo_tiny", DEADLINES_MS[(i // 40) % len(DEADLINES_MS)])
            f = vb.kernel.run_frame(sim, None, rng)
            gov.after_frame(d.frame, f.latency_ns / 1e6)
        gov._next_refresh = 0
        gov.refresh()
        st = gov.status()
        grids = {k: g for k, g in gov._grids.items()}
    if gov.recorder is not None:
        gov.recorder.close()
    per_frame_mj = ((st["measured_energy_j"] - half["measured_energy_j"])
                    / (st["measured_frames"] - half["measured_frames"]) * 1e3)
    return {"status": st, "per_frame_mj": per_frame_mj, "grids": grids, "governor": gov}


def test_learned_scales_approach_the_truth_and_save_energy(tmp_path, phone):
    cfg, est = phone
    tables_before = cfg.model_dump()
    off = governed_run(tmp_path, cfg, est, learn=False, frames=960)
    on = governed_run(tmp_path, cfg, est, learn=True, frames=960)
    pl = on["status"]["power_learning"]
    assert pl["enabled"] and pl["applied_fits"] > 0 and pl["note"] == "applied", pl
    s = pl["power_scales"]
    assert s["gpu"] == pytest.approx(TRUE_SCALE["gpu"], rel=0.05)
    # the CPU term is ~5% of a frame's energy: learned roughly, or kept at its table while the battery's
    # noise leaves its scale uncertain (standard error over 0.05)
    assert (s["cpu"] == pytest.approx(TRUE_SCALE["cpu"], abs=0.25)
            or (s["cpu"] == 1.0 and "cpu" in pl["fit"]["kept_tables"])), pl
    # memory and idle power are both drawn for the whole frame: told apart only by the memory level
    assert s["mem"] == pytest.approx(1.0, rel=0.15) and s["idle"] == pytest.approx(1.0, rel=0.15)
    assert pl["fit"]["fit_rel_rms"] < 0.03 < pl["fit"]["tables_rel_rms"]
    # what the battery measured: less energy per frame once the governor minimises the corrected model
    assert on["per_frame_mj"] < off["per_frame_mj"] * 0.995, (on["per_frame_mj"], off["per_frame_mj"])
    # turned off: the status says so, the grids are the config tables' energies, the config is untouched
    assert off["status"]["power_learning"] == {"enabled": False}
    gov = off["governor"]
    for key, grid in off["grids"].items():
        fresh = compute_grid(*gov.grid_job(key))
        assert np.array_equal(grid.energy_mj, fresh.energy_mj)
    assert cfg.model_dump() == tables_before  # learning on changed only the governor's grids
    # learning on: the grid energies are the learned scales applied to the model's terms
    gov = on["governor"]
    for key, grid in on["grids"].items():
        fresh = compute_grid(*gov.grid_job(key))
        assert not np.allclose(grid.energy_mj, fresh.energy_mj, rtol=0.01)
        assert np.allclose(grid.energy_mj, np.tensordot(gov._learner.scales, fresh.energy_parts, axes=1) * 1e3)


def test_status_top_and_record_show_power(tmp_path, phone):
    cfg, est = phone
    path = tmp_path / "run.jsonl"
    run = governed_run(tmp_path, cfg, est, learn=True, frames=240, recorder_path=path)
    st = run["status"]
    snap = snapshot(st, {})
    assert snap["power_learning"]["power_scales"].keys() == {"idle", "cpu", "gpu", "mem"}
    text = plain_line(snap) + "\n" + screen(snap, "test")
    assert "power scales:" in text and ("gpu x" in text or "learning (" in text)
    rec = read_run(path)
    assert len(rec.frames) == 240 and len(rec.power) >= 3
    assert all(p.rail == "battery" for p in rec.power) and any(p.power_w for p in rec.power)
    measured = [p for p in rec.power if p.energy_j is not None and p.frames]
    assert measured and sum(p.energy_j for p in measured) == pytest.approx(st["measured_energy_j"], rel=1e-3)
    # `plot run`: a measured power panel and an energy-per-frame panel, named in the SVG's text
    pytest.importorskip("matplotlib")
    from governor.plots import plot_run

    summary = plot_run(rec, tmp_path / "run.svg")
    svg = (tmp_path / "run.svg").read_text()
    assert summary.panels == 6 and summary.elements["power_samples"] >= 3  # cpu, gpu, mem, app, power, energy
    assert "measured power (battery)" in svg and "measured energy" in svg and "per frame (mJ)" in svg
    assert 'id="power"' in svg and 'id="energy-per-frame"' in svg
    # the same run without its power samples (a board without a rail) still plots, without those panels
    bare = rec.model_copy(update={"power": []})
    summary = plot_run(bare, tmp_path / "bare.svg")
    svg = (tmp_path / "bare.svg").read_text()
    assert summary.panels == 4 and "measured power" not in svg and 'id="energy-per-frame"' not in svg


# ---- the fit's gate, bounds and offset (the learner alone, on the model's own terms) --------------
def grid_terms(cfg, est):
    grid = compute_grid(est, cfg, None, None)
    return grid.energy_parts[:, 0, :], est.grid_points  # level 0: (terms, points)


def feed(learner, parts, idx, scales, offset_mw=0.0, wall_ns=None, frames=10):
    """One interval of ``frames`` frames at point ``idx`` whose rail measures the terms at ``scales``
    plus ``offset_mw`` over the interval's wall time."""
    col = parts[:, idx].astype(float)
    for _ in range(frames):
        learner.frame(parts[:, idx][:, None], 0, 1.0, (int(idx),))
    wall_ns = wall_ns or frames * 40e6
    measured_j = frames * float(col @ scales) + offset_mw * wall_ns * 1e-12
    return learner.interval(measured_j * 1e6, wall_ns)


def test_one_point_is_not_identifiable(phone):
    cfg, est = phone
    parts, _ = grid_terms(cfg, est)
    learner = PowerLearner(["idle", "cpu", "gpu", "mem"])
    for _ in range(40):
        feed(learner, parts, 500, np.array([1.0, 0.6, 1.8, 1.0]))
    st = learner.status()
    assert st["applied_fits"] == 0 and "distinct points" in st["note"]
    assert st["power_scales"] == {"idle": 1.0, "cpu": 1.0, "gpu": 1.0, "mem": 1.0}


def test_offset_is_not_blamed_on_the_domains_and_scales_are_bounded(phone):
    cfg, est = phone
    parts, _ = grid_terms(cfg, est)
    rng = np.random.default_rng(3)
    truth = np.array([1.0, 1.3, 0.7, 1.0])
    learner = PowerLearner(["idle", "cpu", "gpu", "mem"])
    for _ in range(64):  # many points, frames at varying duty cycles: a 400 mW offset on the board rail
        feed(learner, parts, int(rng.integers(parts.shape[1])), truth, offset_mw=400.0,
             wall_ns=float(rng.uniform(0.3e9, 0.6e9)))
    st = learner.status()
    assert st["note"] == "applied"
    assert list(st["power_scales"].values()) == pytest.approx(truth, rel=0.02)
    assert st["offset_mw"] == pytest.approx(400.0, rel=0.05)
    wild = PowerLearner(["idle", "cpu", "gpu", "mem"], bounds=(0.5, 2.0))
    for _ in range(64):  # a GPU 3x dearer than its table: held at the bound
        feed(wild, parts, int(rng.integers(parts.shape[1])), np.array([1.0, 1.0, 3.0, 1.0]))
    assert wild.fitted["power_scales"]["gpu"] == 2.0  # the fit itself stops at the bound
    assert wild.status()["power_scales"]["gpu"] <= 2.0


def test_power_scale_bounds_checked():
    with pytest.raises(ValueError, match="0 < low <= 1 <= high"):
        GovernorSettings(power_scale_bounds=(1.5, 2.0))
