"""The memory clock as a third frequency domain, and end-to-end profiles (issue 12, parts 1-3):
the profile format's memory axis and end-to-end runs, the roofline segment model, fits from a
planned handful of points on three-domain virtual boards against the simulator's hidden grid,
estimator files old and new, and the governor's energy over three domains."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from dvfs_schema.board import MemoryDomain
from dvfs_schema.loading import load_board, load_model_spec
from estimator.fit import domain_design, fit_columns
from estimator.model import Estimator
from estimator.planner import plan_grid
from estimator.profile import ProfileError, parse_profile
from estimator.roofline import fit_roofline_columns, roofline, roofline_term
from sysfs_backends.virtual.simulator import Simulator

FIXTURES = Path(__file__).parent / "fixtures"


def _refused(data, *fragments):
    with pytest.raises(ProfileError) as info:
        parse_profile(data, "p.json")
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


@pytest.fixture
def mem_profile(valid_profile) -> dict:
    data = copy.deepcopy(valid_profile)
    data["frequencies"]["mem_hz"] = [528000000, 1068000000, 2112000000]
    for run in data["runs"]:
        run["mem_hz"] = 2112000000
    return data


def _hidden_grid_errors(sim: Simulator, est: Estimator, contexts=None) -> np.ndarray:
    c, g = est.grid_pairs
    m = est.grid_mem
    ape = []
    for ctx in contexts or [None]:
        truth = sim.run(c, g, ctx, mem_hz=m).latency_ns / 1e6  # noise-free: the hidden grid
        ape.append(np.abs(est.latency_ms(c, g, ctx, mem_hz=m) - truth) / truth * 100)
    return np.concatenate(ape)


# ---- profile format --------------------------------------------------------------------------
def test_memory_axis_accepted_and_its_domain_listed(mem_profile):
    p = parse_profile(mem_profile)
    assert p.domains == ["cpu", "gpu", "mem"]
    assert p.to_dict()["frequencies"]["mem_hz"] == [528000000, 1068000000, 2112000000]


def test_profile_without_memory_axis_round_trips_without_it(valid_profile):
    out = parse_profile(valid_profile).to_dict()
    assert "mem_hz" not in out["frequencies"] and all("mem_hz" not in r for r in out["runs"])


def test_run_without_its_memory_level_is_refused(mem_profile):
    del mem_profile["runs"][1]["mem_hz"]
    _refused(mem_profile, "run 1", "rule 'mem_hz required when frequencies.mem_hz is present'")


def test_run_memory_level_not_in_table_is_refused(mem_profile):
    mem_profile["runs"][0]["mem_hz"] = 800000000
    _refused(mem_profile, "run 0", "rule 'mem_hz in frequencies.mem_hz'", "800000000")


def test_memory_level_without_a_memory_table_is_refused(valid_profile):
    valid_profile["runs"][1]["mem_hz"] = 2112000000
    _refused(valid_profile, "run 1", "rule 'mem_hz only with frequencies.mem_hz'")


def test_memory_table_not_ascending_is_refused(mem_profile):
    mem_profile["frequencies"]["mem_hz"] = [2112000000, 528000000]
    _refused(mem_profile, "rule 'frequencies.mem_hz strictly ascending'")


def test_end_to_end_profile_accepted(mem_profile):
    for run in mem_profile["runs"]:
        run["layers"] = []
    p = parse_profile(mem_profile)
    assert p.is_end_to_end


def test_mix_of_end_to_end_and_per_layer_runs_is_refused(mem_profile):
    mem_profile["runs"][1]["layers"] = []
    _refused(mem_profile, "run 1", "rule 'all runs per-layer or all end-to-end'")
    for run in mem_profile["runs"]:
        run["layers"] = []
    mem_profile["runs"][1]["layers"] = [{"name": "nms", "kind": "cpu", "cpu_start_ns": 0, "cpu_end_ns": 10}]
    _refused(mem_profile, "run 1", "rule 'all runs per-layer or all end-to-end'", "run 0 is end-to-end")


def test_simulated_profiles_are_built_through_the_profile_model():
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    p = sim.profile_model(plan_grid(list(board.domain_tables.values()), 5), 1)
    assert p.domains == ["cpu", "gpu", "mem"] and len(p.runs) == 5
    assert {r.mem_hz for r in p.runs} <= set(board.memory.frequencies_hz)
    two = sim.profile_model([(2400000, 1000000000)], 1)  # points without the memory: no memory axis
    assert two.domains == ["cpu", "gpu"] and two.runs[0].mem_hz is None
    with pytest.raises(ValueError, match="one frequency per domain"):
        sim.profile_model([(2400000,)], 1)


# ---- simulator physics ------------------------------------------------------------------------
def test_memory_clock_slows_memory_bound_work_not_compute_bound():
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    lo, hi = board.memory.frequencies_hz[0], board.memory.frequencies_hz[-1]
    fast, slow = (sim.run(2400000, 1000000000, mem_hz=m) for m in (hi, lo))
    exe_fast = (fast.gpu_end - fast.gpu_start)[:, 0]
    exe_slow = (slow.gpu_end - slow.gpu_start)[:, 0]
    ratio = exe_slow / exe_fast
    gpu = sim.c.on_gpu
    intensity = sim.c.flops[gpu] / sim.c.bytes[gpu]
    # the most memory-bound kernel slows far more than the most compute-bound one
    assert ratio[gpu][np.argmin(intensity)] > 2.0 > 1.3 > ratio[gpu][np.argmax(intensity)]
    assert sim.run(2400000, 1000000000).latency_ns[0] == pytest.approx(fast.latency_ns[0])  # default: top
    with pytest.raises(ValueError, match="no memory domain"):
        Simulator(load_board("pixel6_phone"), spec).run(2400000, 800000000, mem_hz=1)


# ---- the roofline segment model --------------------------------------------------------------
def test_roofline_fit_recovers_a_segment_moving_between_compute_and_memory_bound():
    rng = np.random.default_rng(3)
    g_tab, m_tab = np.array([300e6, 500e6, 700e6, 1000e6]), np.array([528e6, 1068e6, 1560e6, 2112e6])
    plan = plan_grid([[1, 2, 3], g_tab.astype(int).tolist(), m_tab.astype(int).tolist()])
    g = np.repeat([p[1] for p in plan], 3).astype(float)
    m = np.repeat([p[2] for p in plan], 3).astype(float)

    def truth(gg, mm):
        return 80_000 * roofline(1000e6 / gg, 2112e6 / mm, 0.7, 3.0) + 4_000 * 1000e6 / gg + 2_000

    y = truth(g, m) * rng.lognormal(0, 0.02, g.shape)
    c = np.full_like(g, 2.0)
    x = domain_design([c, g, m], [3.0, 1000e6, 2112e6], None, None)
    coef, roof = fit_roofline_columns(x, [1, 3], 1000e6 / g, 2112e6 / m, None, y[:, None])
    gg, mm = (a.ravel() for a in np.meshgrid(g_tab, m_tab))
    xg = domain_design([np.full_like(gg, 2.0), gg, mm], [3.0, 1000e6, 2112e6], None, None)
    pred = xg @ coef[0] + roofline_term(roof, 1000e6 / gg, 2112e6 / mm, None)[0]
    err = np.abs(pred - truth(gg, mm)) / truth(gg, mm)
    assert err.mean() < 0.02 and err.max() < 0.05
    # a sum of 1/f terms (the two-domain model's form) cannot follow the corner between the regimes
    lin = fit_columns(x, y[:, None], n_domains=3)[0]
    lin_err = np.abs(xg @ lin - truth(gg, mm)) / truth(gg, mm)
    assert lin_err.mean() > 2 * err.mean(), (lin_err.mean(), err.mean())


def test_per_layer_fit_from_planned_points_predicts_the_hidden_three_domain_grid():
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    points = plan_grid(list(board.domain_tables.values()))
    assert len(points) == 8
    est = Estimator.fit(sim.profile_model(points, 3, None, np.random.default_rng(0)))
    assert est.domains == ["cpu", "gpu", "mem"]
    assert len(est.grid_points) == np.prod([len(t) for t in board.domain_tables.values()]) == 448
    ape = _hidden_grid_errors(sim, est)
    assert ape.mean() <= 2.0 and np.percentile(ape, 95) <= 4.0
    rows = est.grid().rows()
    assert set(rows[0]) >= {"cpu_khz", "gpu_hz", "mem_hz", "latency_ms"}
    again = Estimator.from_json(est.to_json())
    c, g = est.grid_pairs
    assert np.allclose(again.latency_ms(c, g, mem_hz=est.grid_mem), est.latency_ms(c, g, mem_hz=est.grid_mem))


def test_language_model_on_three_domains_grid_and_point_queries_agree():
    board, spec = load_board("sd888_phone"), load_model_spec("smollm_135m")
    sim = Simulator(board, spec)
    est = Estimator.fit(sim.profile_model(plan_grid(list(board.domain_tables.values())), 3,
                                          spec.profile_context_len, np.random.default_rng(1)))
    ape = _hidden_grid_errors(sim, est, spec.profile_context_len)
    assert ape.mean() <= 2.0
    # the grid's table path and the general path (a context per point) give the same numbers
    c, g = est.grid_pairs
    ctx = np.full(c.shape, 700.0)
    ctx[0] = 700.0 + 1e-9
    assert np.allclose(est.latency_ms(c, g, 700, mem_hz=est.grid_mem),
                       est.latency_ms(c, g, ctx, mem_hz=est.grid_mem), rtol=1e-9)


def test_cpu_only_board_with_a_memory_domain():
    board = load_board("rpi5").model_copy(deep=True)
    board.memory = MemoryDomain(kind="devfreq", node="dmc", mechanism="userspace",
                                frequencies_hz=[800000000, 1600000000, 3200000000],
                                governors=["userspace", "simple_ondemand"])
    spec = load_model_spec("mobilenet_v2")
    sim = Simulator(board, spec)
    est = Estimator.fit(sim.profile_model(plan_grid(list(board.domain_tables.values())), 3, None,
                                          np.random.default_rng(2)))
    assert est.domains == ["cpu", "mem"] and est.grid_pairs[1] is None
    assert _hidden_grid_errors(sim, est).mean() <= 2.0
    assert set(est.grid().rows()[0]) == {"cpu_khz", "mem_hz", "latency_ms", "host_busy_ms"}


# ---- end-to-end profiles ---------------------------------------------------------------------
def test_end_to_end_fit_predicts_the_hidden_grid():
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    points = plan_grid(list(board.domain_tables.values()))
    est = Estimator.fit(sim.profile_model(points, 3, None, np.random.default_rng(0), end_to_end=True))
    assert est.is_end_to_end and est.data.layer_names == []
    assert _hidden_grid_errors(sim, est).mean() <= 5.0
    b = est.grid()
    assert not b.measured_breakdown
    assert np.allclose(b.host_busy_ms + b.gpu_busy_ms, b.latency_ms) and (b.gpu_busy_ms > 0).all()
    again = Estimator.from_json(est.to_json())
    assert np.allclose(again.grid().latency_ms, b.latency_ms)


@pytest.mark.parametrize("board_name", ["orin_nano", "rk3588"])
def test_end_to_end_language_model_context_stretches_the_device_side_only(board_name):
    """A decode step launches as many kernels at every context: at the slowest CPU the host's
    launch stream sets the pace whatever the context, while at the fastest clocks the device's
    attention grows with it. One amplitude per context on the whole maximum predicted ~5% growth
    at both; the fit stretches the device side alone (tail_device_context)."""
    board, spec = load_board(board_name), load_model_spec("smollm_135m")
    sim = Simulator(board, spec)
    tables = list(board.domain_tables.values())
    est = Estimator.fit(sim.profile_model(plan_grid(tables), 3, [256, 1024], np.random.default_rng(1),
                                          end_to_end=True))
    assert est.data.tail_device_context > 0
    host_bound, fastest = (tables[0][0], tables[1][-1], tables[2][-1]), tuple(t[-1] for t in tables)
    for c, g, m in (host_bound, fastest):
        truth = [sim.run(c, g, ctx, mem_hz=m).latency_ns[0] for ctx in (256, 1024)]
        pred = [float(est.latency_ms(c, g, ctx, mem_hz=m)[0]) for ctx in (256, 1024)]
        assert pred[1] / pred[0] == pytest.approx(truth[1] / truth[0], abs=0.02), (c, g, m)
    again = Estimator.from_json(est.to_json())
    assert again.data.tail_device_context == est.data.tail_device_context
    assert np.allclose(again.grid(context_len=512).latency_ms, est.grid(context_len=512).latency_ms)
    data = json.loads(est.to_json())
    del data["tail_device_context"]  # files written before it: the whole maximum scales alike
    assert Estimator.from_json(json.dumps(data)).data.tail_device_context == 0.0
    data["tail_device_context"] = -1.0
    with pytest.raises(ValueError, match="tail_device_context"):
        Estimator.from_json(json.dumps(data))


def test_end_to_end_fit_from_5_points_keeps_terms_leave_one_out_can_rank():
    """With 5 points a set of 4 linear terms plus the roofline leaves every leave-one-out fold
    threading its 4 points (any shape looks as good): only the CPU term and the constant stay."""
    board, spec = load_board("orin_nano"), load_model_spec("mobilenet_v2")
    sim = Simulator(board, spec)
    tables = list(board.domain_tables.values())
    est = Estimator.fit(sim.profile_model(plan_grid(tables, 5), 3, None, np.random.default_rng(2), end_to_end=True))
    assert est.data.tail[1] == 0 and est.data.tail[2] == 0  # no linear GPU or memory term
    c, g = est.grid_pairs
    truth = sim.run(c, g, None, mem_hz=est.grid_mem).latency_ns / 1e6
    ape = np.abs(est.grid().latency_ms - truth) / truth
    assert ape.mean() < 0.05  # this seed's 5-point fit was 8% off when it could pick any set


def test_end_to_end_fit_needs_enough_points():
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    prof = sim.profile_model(plan_grid(list(board.domain_tables.values()), 3), 3, None, end_to_end=True)
    with pytest.raises(ValueError, match="distinct points"):
        Estimator.fit(prof)


# ---- estimator files -------------------------------------------------------------------------
def test_two_domain_estimator_file_of_format_1_still_loads():
    """Written by the estimator before domains were a list (cpu_khz/gpu_hz fields)."""
    est = Estimator.from_json((FIXTURES / "estimator_v1_cpu_gpu.json").read_text())
    assert est.domains == ["cpu", "gpu"] and est.data.cpu_khz == [1000000, 2000000]
    assert est.data.gpu_ref_hz == 600000000.0 and est.data.mem_hz == []
    assert est.latency_ms(1500000, 450000000)[0] == pytest.approx(0.17833333, rel=1e-6)
    with pytest.raises(ValueError, match="without a memory domain"):
        est.latency_ms(1500000, 450000000, mem_hz=1)


def test_bad_roofline_rows_name_the_field():
    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    est = Estimator.fit(Simulator(board, spec).profile_model(plan_grid(list(board.domain_tables.values())), 1))
    data = json.loads(est.to_json())
    data["exec_roofline"][0] = data["exec_roofline"][0][:3]
    with pytest.raises(ValueError, match=r"field 'exec_roofline\[0\]': 3 coefficients, expected 7"):
        Estimator.from_json(json.dumps(data))
    data = json.loads(est.to_json())
    data["tail_roofline"][3] = 0.5
    with pytest.raises(ValueError, match="field 'tail_roofline': the roofline's p must be >= 1"):
        Estimator.from_json(json.dumps(data))


# ---- planner ---------------------------------------------------------------------------------
def test_three_domain_plan_shows_every_pair_of_domains_its_four_corners():
    tables = list(load_board("orin_nano").domain_tables.values())
    plan = plan_grid(tables)
    assert len(plan) == 8 and len(set(plan)) == 8
    assert plan[0] == tuple(t[-1] for t in tables)
    assert tuple(t[0] for t in tables) in plan
    for i, j in ((0, 1), (0, 2), (1, 2)):
        corners = {(p[i], p[j]) for p in plan}
        assert {(a, b) for a in (tables[i][0], tables[i][-1]) for b in (tables[j][0], tables[j][-1])} <= corners


def test_three_domain_plan_slows_one_domain_at_a_time_then_the_pairs():
    """The one planner (the profiler's too): from the fastest point each domain slowed alone, so an
    end-to-end fit sees the GPU's share unmasked by a slow host; 5 points keep the far corner."""
    cpu, gpu, mem = [2_000_000, 500_000, 1_000_000], [100, 200, 300, 400], [1_000, 2_000, 4_000]
    plan = plan_grid([cpu, gpu, mem])
    assert plan == [(2_000_000, 400, 4_000), (500_000, 400, 4_000), (2_000_000, 100, 4_000),
                    (2_000_000, 400, 1_000), (2_000_000, 100, 1_000), (500_000, 100, 1_000),
                    (1_000_000, 300, 2_000), (500_000, 400, 1_000)]  # the centre 7th, CPU + memory 8th
    for n in (6, 7):
        assert plan_grid([cpu, gpu, mem], n) == plan[:n]
    more = plan_grid([cpu, gpu, mem], 12)
    assert len(set(more)) == 12 and more[:8] == plan
    assert plan_grid([cpu, gpu, mem], 5) == [(2_000_000, 400, 4_000), (500_000, 100, 4_000), (500_000, 400, 1_000),
                                             (2_000_000, 100, 1_000), (500_000, 100, 1_000)]
    assert plan_grid([[1], [2, 2], [3]], 7) == [(1, 2, 3)]  # one-level tables: one point, no duplicates
    with pytest.raises(ValueError, match="non-empty frequency table"):
        plan_grid([cpu, gpu, []])


# ---- governor --------------------------------------------------------------------------------
def test_governor_grid_energy_counts_the_memory_for_the_whole_frame():
    from governor.core import compute_grid

    board, spec = load_board("rk3588"), load_model_spec("yolo_tiny")
    est = Estimator.fit(Simulator(board, spec).profile_model(plan_grid(list(board.domain_tables.values())), 1))
    grid = compute_grid(est, board, None, None)
    b = est.grid(with_overlap=False)
    mem_mj = board.power_mw("mem", b.mem_hz) * b.latency_ms * 1e-3  # mW x ms = uJ
    rest_mj = (board.power_mw("cpu", b.cpu_khz) * b.host_busy_ms + board.power_mw("gpu", b.gpu_hz) * b.gpu_busy_ms
               + board.idle_power_mw * b.latency_ms) * 1e-3
    assert np.allclose(grid.energy_mj[0], mem_mj + rest_mj)
    assert (mem_mj > 0).all()


def test_end_to_end_fit_without_a_memory_axis():
    board, spec = load_board("pixel6_phone"), load_model_spec("yolo_tiny")
    sim = Simulator(board, spec)
    est = Estimator.fit(sim.profile_model(plan_grid(list(board.domain_tables.values())), 3, None,
                                          np.random.default_rng(0), end_to_end=True))
    assert est.domains == ["cpu", "gpu"] and est.data.tail_roofline is None
    b = est.grid()
    assert np.allclose(b.host_busy_ms + b.gpu_busy_ms, b.latency_ms) and (b.gpu_busy_ms > 0).all()
    assert _hidden_grid_errors(sim, est).mean() <= 10.0  # a sum of 1/f terms: no pipeline, no roofline
