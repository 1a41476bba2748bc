"""Frames that run over time on the virtual board: a change lands mid-frame, apps queue on the GPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dvfs_schema.loading import load_board, load_model_spec
from sysfs_backends.virtual.board import VirtualBoard
from sysfs_backends.virtual.running_frame import RunningFrame, run_frame_over_time


@pytest.fixture
def board(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    cpu_dir, gpu_dir, _ = vb.kernel.frame_domains()
    vb.kernel.write(f"{gpu_dir}/governor", "performance")  # the GPU then runs at its max_freq
    time.sleep(0.01)  # past the transition of that write
    return vb


def test_alone_at_one_point_it_runs_as_the_instant_frame_does(board):
    sim = board.simulator(load_model_spec("yolo_tiny"))
    instant = board.kernel.run_frame(sim, None, np.random.default_rng(7))
    over_time = run_frame_over_time(board.kernel, sim, None, np.random.default_rng(7))
    assert over_time.latency_ns == pytest.approx(instant.latency_ns, rel=1e-6)
    assert over_time.wait_ns == 0 and over_time.stall_ns == 0
    assert over_time.points == ((instant.cpu_khz, instant.gpu_hz, instant.mem_hz, 1.0),)
    # one noise factor for host and GPU alike: the energy is the instant frame's within a fraction
    assert over_time.energy_j == pytest.approx(instant.energy_j, rel=0.01)
    assert board.kernel.read_state()["gpu_queue"] == []


def test_a_change_mid_frame_slows_the_frame_in_flight(board):
    kernel = board.kernel
    sim = board.simulator(load_model_spec("yolo_tiny"))
    _, gpu_dir, _ = kernel.frame_domains()
    gpus = kernel.board.domain_tables["gpu"]
    fast = run_frame_over_time(kernel, sim).latency_ns
    kernel.write(f"{gpu_dir}/max_freq", str(gpus[0]))
    time.sleep(0.01)
    slow = run_frame_over_time(kernel, sim).latency_ns
    kernel.write(f"{gpu_dir}/max_freq", str(gpus[-1]))
    time.sleep(0.01)
    frame = RunningFrame(kernel, sim)
    lowered = False
    while (wait_ns := frame.advance()) is not None:
        if not lowered and time.monotonic_ns() - frame.start_ns > fast / 3:
            kernel.write(f"{gpu_dir}/max_freq", str(gpus[0]))  # lands while the frame runs
            lowered = True
        time.sleep(wait_ns / 1e9)
    ran = frame.result
    assert lowered and fast * 1.05 < ran.latency_ns < slow
    assert [p[1] for p in ran.points] == [gpus[-1], gpus[0]]
    assert sum(p[3] for p in ran.points) == pytest.approx(1.0)
    assert 0.2 < ran.points[0][3] < 0.8  # about a third of the work done at the top, the rest at the bottom


def test_frames_of_two_apps_queue_on_the_gpu(board):
    kernel = board.kernel
    sim = board.simulator(load_model_spec("yolo_tiny"))
    doms = kernel.read_state()["domains"]
    cpu, gpu, mem = (doms[d]["cur"] for d in kernel.frame_domains())
    alone = sim.run(cpu, gpu, None, None, mem_hz=mem)  # noise-free, at the point in force
    results = {}

    def app(name, seed):
        results[name] = run_frame_over_time(kernel, sim, None, np.random.default_rng(seed))

    first = threading.Thread(target=app, args=("first", 1))
    first.start()
    time.sleep(0.001)
    second = threading.Thread(target=app, args=("second", 2))
    second.start()
    first.join()
    second.join()
    a, b = results["first"], results["second"]
    assert a.start_ns < b.start_ns and a.wait_ns == 0
    # the second starts when the first's GPU work is done: its GPU busy time (x its noise) after it began
    gpu_ms = float(alone.gpu_busy_ns[0]) * a.noise / 1e6
    assert (b.start_ns + b.wait_ns - a.start_ns) / 1e6 == pytest.approx(gpu_ms, abs=0.01)
    assert b.latency_ns == pytest.approx(b.wait_ns + float(alone.latency_ns[0]) * b.noise, rel=1e-6)
    state = kernel.read_state()  # both gone from the queue; the GPU was last busy until the second's work ended
    end_b_ns = b.start_ns + b.wait_ns + float(alone.gpu_busy_ns[0]) * b.noise
    assert state["gpu_queue"] == [] and state["gpu_free_ns"] == pytest.approx(end_b_ns, abs=2)
