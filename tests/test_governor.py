"""The control loop in process, on the virtual board (its kernel applies the writes)."""

from __future__ import annotations

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from governor.app import fit_on_virtual_board
from governor.config import GovernorSettings
from governor.core import Governor, GovernorError
from sysfs_backends.virtual.board import VirtualBoard

BOARD = "sd888_phone"


@pytest.fixture(scope="module")
def estimators():
    board = load_board(BOARD)
    return {"yolo": fit_on_virtual_board(board, "yolo_tiny"),
            "llm": fit_on_virtual_board(board, "smollm_135m")}


@pytest.fixture
def setup(tmp_path, estimators):
    board = load_board(BOARD)
    vb = VirtualBoard(tmp_path / "b", board)
    backend = vb.backend(tmp_path / "s.json")
    # the decisions' mechanics at a fixed warm-up margin (the prior from the profile's repeats is
    # tested in test_first_frames): the deadlines below were chosen against a 10% one
    gov = Governor(backend, board, estimators, GovernorSettings(initial_margin=0.10))
    gov.start()
    yield gov, vb, backend
    gov.stop()


def brute_force_choice(gov: Governor, est, deadline_ms: float, factor: float):
    """Least predicted energy among pairs meeting the deadline, by explicit enumeration. The board
    boots at its fastest point; a point that changes a domain runs there until the change lands,
    never counted faster than its own latency."""
    board = gov.board
    br = est.grid(with_overlap=False)
    mems = br.mem_hz if br.mem_hz is not None else [None] * len(br.cpu_khz)
    # until a changed domain's new frequency lands (its actuation latency: 20 us CPU, 200 us GPU,
    # 8 ms memory on this board) the frame runs at the old point: the board's fastest
    top = (board.cpu.inference.frequencies_khz[-1], board.gpu.frequencies_hz[-1],
           board.memory.frequencies_hz[-1] if br.mem_hz is not None else None)
    old = [lat for c, g, m, lat in zip(br.cpu_khz, br.gpu_hz, mems, br.latency_ms, strict=True)
           if (c, g, m) == top][0] * factor
    best = None
    for c, g, m, lat, host, gpu in zip(br.cpu_khz, br.gpu_hz, mems, br.latency_ms, br.host_busy_ms,
                                       br.gpu_busy_ms, strict=True):
        delay = max(0.02 if c != top[0] else 0.0, 0.2 if g != top[1] else 0.0, 8.0 if m != top[2] else 0.0)
        at_old = old if delay >= old else delay + (1 - delay / old) * lat * factor
        if max(at_old, lat * factor) > deadline_ms:
            continue
        e = board.power_mw("cpu", c) * host + board.power_mw("gpu", g) * gpu + board.idle_power_mw * lat
        if m is not None:  # the memory is active for the whole frame
            e += board.power_mw("mem", m) * lat
        if best is None or e < best[0]:
            best = (e, int(c), int(g))
    return best


def test_first_decision_is_cheapest_feasible_pair(setup, estimators):
    gov, vb, _ = setup
    d = gov.before_frame("yolo", 22.0, app="cam")
    expected = brute_force_choice(gov, estimators["yolo"], 22.0, gov.correction("cam", "yolo").factor)
    assert (d.cpu_khz, d.gpu_hz) == expected[1:]
    assert d.feasible and d.changed and d.predicted_ms <= 22.0
    # the pair is what the kernel now has in force
    root = vb.root
    assert (root / "sys/devices/system/cpu/cpufreq/policy7/scaling_cur_freq").read_text().strip() == str(d.cpu_khz)
    assert (root / "sys/class/kgsl/kgsl-3d0/gpuclk").read_text().strip() == str(d.gpu_hz)


def test_no_write_when_decision_unchanged(setup):
    gov, _, backend = setup
    d = gov.before_frame("yolo", 22.0)
    gov.after_frame(d.frame, d.predicted_ms * 0.9)
    writes = backend.transport.writes
    d2 = gov.before_frame("yolo", 22.0)
    assert not d2.changed and backend.transport.writes == writes


def test_a_cheaper_pair_waits_out_the_dwell_a_raise_does_not(setup):
    """After the pair in force changed, a cheaper pair is taken only once ``lower_dwell_ms`` has
    passed (the pair in force meeting the deadline meanwhile); a raise goes through at once."""
    import time

    gov, _, _ = setup
    dwell_s = gov.settings.lower_dwell_ms / 1e3
    assert dwell_s > 0

    def frame(deadline_ms):
        d = gov.before_frame("yolo", deadline_ms)
        gov.after_frame(d.frame, d.predicted_ms)
        return d

    time.sleep(dwell_s)
    cheap = frame(1000.0)
    assert cheap.changed  # from the boot's fastest point to the cheapest
    t_raise = time.monotonic()
    fast = frame(cheap.predicted_ms * 0.9)
    assert fast.changed and fast.feasible, "a raise is never held by the dwell"
    held = frame(1000.0)
    assert time.monotonic() - t_raise < dwell_s, "the machine was too slow for this check"
    assert not held.changed and held.feasible and (held.cpu_khz, held.gpu_hz) == (fast.cpu_khz, fast.gpu_hz)
    time.sleep(dwell_s)
    lowered = frame(1000.0)
    assert lowered.changed and (lowered.cpu_khz, lowered.gpu_hz, lowered.mem_hz) == \
        (cheap.cpu_khz, cheap.gpu_hz, cheap.mem_hz)


def test_infeasible_deadline_runs_fastest_and_says_so(setup):
    gov, _, _ = setup
    d = gov.before_frame("yolo", 1.0)
    board = gov.board
    assert not d.feasible
    assert (d.cpu_khz, d.gpu_hz) == (board.cpu.inference.frequencies_khz[-1], board.gpu.frequencies_hz[-1])
    assert gov.status()["apps"]["default"]["infeasible"] == 1


def test_never_lowers_under_a_frame_in_flight(setup):
    gov, _, _ = setup
    fast = gov.before_frame("yolo", 13.0, app="camera")  # demanding: high frequencies
    easy = gov.before_frame("llm", 200.0, context_len=300, app="assistant")
    assert easy.cpu_khz >= fast.cpu_khz and easy.gpu_hz >= fast.gpu_hz
    gov.after_frame(fast.frame, 12.0)
    gov.after_frame(easy.frame, 15.0)
    alone = gov.before_frame("llm", 200.0, context_len=300, app="assistant")
    assert (alone.cpu_khz, alone.gpu_hz) < (fast.cpu_khz, fast.gpu_hz) or alone.gpu_hz < fast.gpu_hz


def test_thermal_cap_decides_with_frequencies_in_force(setup):
    gov, vb, _ = setup
    d = gov.before_frame("yolo", 12.0)
    assert (d.cpu_khz, d.gpu_hz) == (2_841_600, 840_000_000)  # boot state: already the fastest
    gov.after_frame(d.frame, 11.0)
    vb.kernel.force_thermal_cap(True)  # the kernel caps without any write of ours
    gov._next_refresh = 0  # as if state_refresh_s had passed
    d = gov.before_frame("yolo", 12.0)  # needs more than the capped board allows
    sim = vb.board.simulation
    assert d.cpu_khz <= sim.thermal_cap_cpu_khz and d.gpu_hz <= sim.thermal_cap_gpu_hz
    assert not d.feasible
    assert gov.status()["capped"]
    # with a deadline the capped board can meet, it picks a pair within the cap
    d = gov.before_frame("yolo", 25.0)
    assert d.feasible and d.cpu_khz <= sim.thermal_cap_cpu_khz and d.gpu_hz <= sim.thermal_cap_gpu_hz


def test_language_model_context_raises_frequencies(setup):
    gov, _, _ = setup
    short = gov.before_frame("llm", 15.5, context_len=128)
    gov.after_frame(short.frame, short.predicted_ms)
    long = gov.before_frame("llm", 15.5, context_len=4000)
    assert long.predicted_ms > 0
    assert (long.cpu_khz, long.gpu_hz) != (short.cpu_khz, short.gpu_hz)
    with pytest.raises(GovernorError) as info:
        gov.before_frame("llm", 15.5)
    assert info.value.code == "bad_field"


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "33"])
def test_bad_deadline_refused(setup, bad):
    gov, _, _ = setup
    with pytest.raises(GovernorError) as info:
        gov.before_frame("yolo", bad)
    assert info.value.code == "bad_field"


def test_unknown_model_and_frame(setup):
    gov, _, _ = setup
    with pytest.raises(GovernorError) as info:
        gov.before_frame("resnet", 30.0)
    assert info.value.code == "unknown_model" and "yolo" in str(info.value)
    with pytest.raises(GovernorError) as info:
        gov.after_frame(999, 10.0)
    assert info.value.code == "unknown_frame"


def test_frame_context_manager_measures_the_block(setup):
    gov, _, _ = setup
    import time

    with gov.frame("yolo", 30.0, app="cam") as d:
        time.sleep(0.02)
    assert d.frame == 1
    assert gov.status()["apps"]["cam"]["frames"] == 1
    assert gov.status()["models"]["yolo"]["samples"] == 1


def test_miss_rate_held_at_target_with_noise_and_background_load(tmp_path, estimators):
    """600 noisy frames with a load phase: misses within the target + 1% of frames (issue 11's
    allowance over the oracle at the target; the regime changes cost a few), energy well below max."""
    board = load_board(BOARD)
    vb = VirtualBoard(tmp_path / "m", board)
    sim = vb.simulator(load_model_spec("yolo_tiny"))
    gov = Governor(vb.backend(tmp_path / "m.json"), board, {"yolo": estimators["yolo"]},
                   GovernorSettings(miss_rate_target=0.01))
    deadline = 19.0
    misses, energy, perf_energy = 0, 0.0, 0.0
    with gov:
        for n in range(600):
            vb.kernel.set_background_load(0.6 if 250 <= n < 400 else 0.0)
            d = gov.before_frame("yolo", deadline)
            fr = vb.kernel.run_frame(sim, None, np.random.default_rng(n))
            gov.after_frame(d.frame, fr.latency_ns / 1e6)
            misses += fr.latency_ns / 1e6 > deadline
            energy += fr.energy_j
            top = sim.run(board.cpu.inference.frequencies_khz[-1], board.gpu.frequencies_hz[-1], None,
                          np.random.default_rng(n), host_slowdown=1 + fr.background_load)
            perf_energy += (board.power_mw("cpu", board.cpu.inference.frequencies_khz[-1]) * top.host_busy_ns[0]
                            + board.power_mw("gpu", board.gpu.frequencies_hz[-1]) * top.gpu_busy_ns[0]
                            + board.idle_power_mw * top.latency_ns[0]) * 1e-12
        assert gov.status()["models"]["yolo"]["host_slowdown"] <= 1.15  # load gone: forgotten
    assert misses <= 12  # 2%: the target plus 1% (seeds 0/1000/2000 measured 10/6/8 with margin 0)
    assert energy < 0.8 * perf_energy


def test_without_power_tables_lowest_frequencies_on_the_feasible_front(tmp_path, estimators):
    board = load_board(BOARD).model_copy(deep=True)
    board.cpu.policies[board.cpu.inference_policy].power_mw = None
    board.gpu.power_mw = None
    vb = VirtualBoard(tmp_path / "np", load_board(BOARD))
    with Governor(vb.backend(tmp_path / "np.json"), board, {"yolo": estimators["yolo"]}) as gov:
        d = gov.before_frame("yolo", 22.0)
        grid = estimators["yolo"].grid(with_overlap=False)
        factor = gov.correction("cam", "yolo").factor
        # worst-case transition latency: the GPU's 0.2 ms, or the memory's 1 ms where it has one
        ok = grid.latency_ms * factor + (0.2 if grid.mem_hz is None else 1.0) <= 22.0
        if grid.mem_hz is not None:  # compare at the memory level the governor chose
            ok &= grid.mem_hz == gov.backend.state()["mem"].cur
        c, g = grid.cpu_khz[ok], grid.gpu_hz[ok]
        # nothing feasible is lower in both domains: the choice is on the Pareto front
        assert not np.any((c <= d.cpu_khz) & (g <= d.gpu_hz) & ((c < d.cpu_khz) | (g < d.gpu_hz)))
        assert d.feasible
