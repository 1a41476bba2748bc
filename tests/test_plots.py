"""`dvfs-gov plot`: real files rendered with Agg, checked in the files themselves (PNG header and
size, SVG parsed and its elements counted by the ids the plots give them)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from dvfs_schema.loading import load_board, load_model_spec  # noqa: E402
from estimator.model import Estimator  # noqa: E402
from estimator.planner import plan_grid, plan_points  # noqa: E402
from estimator.profile import parse_profile  # noqa: E402
from governor.plots import PlotError, bubbles_ns, governor_pick, plot_grid  # noqa: E402
from governor.recording import FrameRecord, RunRecorder, header_for  # noqa: E402
from sysfs_backends.virtual.simulator import Simulator  # noqa: E402

CLI = [sys.executable, "-m", "governor.cli"]
BOARD = "sd888_phone"
SVG = "{http://www.w3.org/2000/svg}"


def run_cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    board = load_board(BOARD)
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    pairs = plan_points(board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz)
    prof = sim.profile(pairs, 2, None, np.random.default_rng(0))
    (tmp / "yolo.profile.json").write_text(json.dumps(prof))
    est = Estimator.fit(parse_profile(prof))
    (tmp / "yolo.est.json").write_text(est.to_json())
    with RunRecorder(tmp / "run.jsonl", header_for(board, ["yolo"], "virtual")) as rec:
        for n in range(60):
            capped = 20 <= n < 30 or 40 <= n < 45  # two capped spans
            missed = n in (5, 21, 50)
            rec.frame(FrameRecord(frame=n, t_s=n * 0.033, app="cam" if n % 3 else "assistant", model="yolo",
                                  deadline_ms=20.0, cpu_khz=1_785_600 if not capped else 1_305_600,
                                  gpu_hz=540_000_000, predicted_ms=18.0, latency_ms=25.0 if missed else 17.5,
                                  missed=missed, feasible=True, capped=capped,
                                  conditions={"cpu": "capped"} if capped else {}, power_w=2.0 + n * 0.01))
    return tmp, est, board, parse_profile(prof)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_ids(path) -> list[str]:
    root = ET.parse(path).getroot()  # parses: well-formed XML
    assert root.tag == f"{SVG}svg"
    return [e.get("id") for e in root.iter() if e.get("id")]


def svg_text(path) -> str:
    root = ET.parse(path).getroot()
    return " ".join("".join(e.itertext()) for e in root.iter(f"{SVG}text"))


def test_grid_png_and_svg(files):
    tmp, est, board, _ = files
    out = run_cli("plot", "grid", tmp / "yolo.est.json", "--deadline-ms", 20, "-o", tmp / "grid.png")
    assert out.returncode == 0, out.stderr
    w, h = png_size(tmp / "grid.png")
    assert w > 800 and h > 300 and (tmp / "grid.png").stat().st_size > 20_000
    out = run_cli("plot", "grid", tmp / "yolo.est.json", "--deadline-ms", 20, "--board", BOARD,
                  "-o", tmp / "grid.svg")
    assert out.returncode == 0, out.stderr
    ids = svg_ids(tmp / "grid.svg")
    # two panels (latency, energy), each with the deadline contour and the governor's pick
    for n in (0, 1):
        assert f"heatmap-{n}" in ids and f"deadline-contour-{n}" in ids and f"governor-pick-{n}" in ids
    text = svg_text(tmp / "grid.svg")
    assert "predicted latency (ms)" in text and "predicted energy per frame (mJ)" in text
    assert "deadline 20 ms" in text
    cpu, gpu, feasible, _ = governor_pick(est, board, 20.0, None)
    assert feasible and f"governor: {cpu // 1000} MHz / {gpu // 1_000_000} MHz" in text
    # the pick meets the deadline by the estimator's own prediction
    assert est.latency_ms(cpu, gpu)[0] <= 20.0


def test_grid_pick_moves_with_the_deadline(files):
    _, est, board, _ = files
    loose = governor_pick(est, board, 40.0, None)
    tight = governor_pick(est, board, 14.0, None)
    assert est.latency_ms(*tight[:2])[0] <= 14.0
    assert (tight[0], tight[1]) != (loose[0], loose[1])
    assert tight[0] + tight[1] / 1e3 > loose[0] + loose[1] / 1e3 or tight[1] > loose[1]


def test_grid_without_board_and_bad_output(files, tmp_path):
    tmp, est, _, _ = files
    summary = plot_grid(est, 20.0, tmp_path / "lat.svg")
    assert summary.panels == 1 and summary.elements["picks"] == 0
    assert "governor-pick-0" not in svg_ids(tmp_path / "lat.svg")
    with pytest.raises(PlotError, match=r"allowed: \.png, \.svg"):
        plot_grid(est, 20.0, tmp_path / "x.jpg")
    out = run_cli("plot", "grid", tmp / "yolo.est.json", "--deadline-ms", 20, "-o", tmp_path / "x.pdf")
    assert out.returncode == 2 and "allowed: .png, .svg" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("plot", "grid", tmp / "yolo.est.json", "--deadline-ms", 20, "--board", "rk3588",
                  "-o", tmp_path / "x.png")
    assert out.returncode == 2 and "--board rk3588: its frequency tables are not the estimator's" in out.stderr


def test_run_timeline(files):
    tmp, *_ = files
    out = run_cli("plot", "run", tmp / "run.jsonl", "-o", tmp / "run.svg")
    assert out.returncode == 0, out.stderr
    assert "60 frames, 3 missed, 2 capped span(s)" in out.stdout
    ids = svg_ids(tmp / "run.svg")
    assert {"freq-cpu", "freq-gpu", "latency-cam", "latency-assistant", "deadline-cam", "power"} <= set(ids)
    assert "misses-cam" in ids and "misses-assistant" in ids  # frames 5, 50 (cam) and 21 (assistant)
    # caps shaded on every panel: 2 spans x (cpu, gpu, 2 apps, power) panels
    assert sum(i.startswith("cap-") for i in ids) == 2 * 5
    out = run_cli("plot", "run", tmp / "run.jsonl", "-o", tmp / "run.png")
    assert out.returncode == 0, out.stderr
    assert png_size(tmp / "run.png")[1] > 600


def test_profile_gantt(files):
    tmp, _, _, prof = files
    out = run_cli("plot", "profile", tmp / "yolo.profile.json", "--run", 1, "-o", tmp / "gantt.svg")
    assert out.returncode == 0, out.stderr
    ids = svg_ids(tmp / "gantt.svg")
    run = prof.runs[1]
    assert sum(i.startswith("host-") for i in ids) == len(run.layers)
    assert sum(i.startswith("device-") for i in ids) == sum(x.kind == "gpu" for x in run.layers)
    gaps = bubbles_ns(run.layers, run.latency_ns)
    assert gaps and ("bubbles" in ids)  # host fallbacks leave the device idle
    assert f"bubble ({len(gaps)})" in svg_text(tmp / "gantt.svg")
    out = run_cli("plot", "profile", tmp / "yolo.profile.json", "--run", 99, "-o", tmp / "g.png")
    assert out.returncode == 2 and "runs 0.." in out.stderr


def test_bubbles_are_the_device_idle_gaps(valid_profile, files):
    run = parse_profile(valid_profile).runs[0]
    # before the first kernel, none between back-to-back kernels (240000 -> 240000), after the last
    assert bubbles_ns(run.layers) == [(0, 30000)]
    assert bubbles_ns(run.layers, run.latency_ns) == [(0, 30000), (400000, 1_000_000)]
    valid_profile["runs"][0]["layers"][1]["gpu_start_ns"] = 250000
    assert bubbles_ns(parse_profile(valid_profile).runs[0].layers) == [(0, 30000), (240000, 250000)]
    # in total, the latency the device was not busy: what the estimator calls bubbles
    for r in files[3].runs:
        busy = sum(x.gpu_end_ns - x.gpu_start_ns for x in r.layers if x.kind == "gpu")
        assert sum(b - a for a, b in bubbles_ns(r.layers, r.latency_ns)) == r.latency_ns - busy


def test_missing_matplotlib_names_the_extra(files, tmp_path):
    tmp, *_ = files
    code = ("import sys; sys.modules['matplotlib'] = None; from governor.cli import main; "
            f"sys.argv = ['dvfs-gov', 'plot', 'run', {str(tmp / 'run.jsonl')!r}, '-o', {str(tmp_path / 'r.png')!r}]; "
            "main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: plotting needs matplotlib: pip install 'deadline-dvfs[plot]'"
    assert not (tmp_path / "r.png").exists()


# ---- a board with a memory domain: one panel per memory level ------------------------------------
BOARD3 = "rk3588"


@pytest.fixture(scope="module")
def files3(tmp_path_factory):
    """A yolo estimator fitted over rk3588's three domains (cpu, gpu, mem), and a run record whose
    frames carry the memory level."""
    tmp = tmp_path_factory.mktemp("plots3")
    board = load_board(BOARD3)
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    points = plan_grid(list(board.domain_tables.values()))
    prof = sim.profile(points, 2, None, np.random.default_rng(0))
    est = Estimator.fit(parse_profile(prof))
    assert est.domains == ["cpu", "gpu", "mem"]
    (tmp / "yolo3.est.json").write_text(est.to_json())
    mem = board.memory.frequencies_hz
    with RunRecorder(tmp / "run3.jsonl", header_for(board, ["yolo"], "virtual")) as rec:
        for n in range(30):
            rec.frame(FrameRecord(frame=n, t_s=n * 0.033, app="cam", model="yolo", deadline_ms=30.0,
                                  cpu_khz=1_800_000, gpu_hz=800_000_000, mem_hz=mem[n // 10],
                                  predicted_ms=25.0, latency_ms=24.0, missed=False, feasible=True,
                                  capped=False, conditions={}))
    return tmp, est, board


def svg_axes(path) -> int:
    """Axes in the figure (matplotlib writes each as a group with id axes_N): a heatmap's and its
    colour bar's per panel."""
    return sum(1 for i in svg_ids(path) if i.startswith("axes_"))


def test_grid_one_panel_per_memory_level(files3):
    tmp, est, board = files3
    levels = len(board.memory.frequencies_hz)
    out = run_cli("plot", "grid", tmp / "yolo3.est.json", "--deadline-ms", 30, "--board", BOARD3,
                  "-o", tmp / "grid3.svg")
    assert out.returncode == 0, out.stderr
    assert f"{2 * levels} panel(s)" in out.stdout  # latency and energy, per memory level
    ids = svg_ids(tmp / "grid3.svg")
    assert svg_axes(tmp / "grid3.svg") == 2 * (2 * levels)  # each panel: heatmap + colour bar
    assert sum(i.startswith("heatmap-") for i in ids) == 2 * levels
    text = svg_text(tmp / "grid3.svg")
    for m in board.memory.frequencies_hz:
        assert f"memory {m / 1e6:g} MHz" in text
    # the pick: on its memory level's panels only (latency and energy), nowhere else
    pick = governor_pick(est, board, 30.0, None)
    assert pick.mem_hz in board.memory.frequencies_hz and pick.feasible
    k = board.memory.frequencies_hz.index(pick.mem_hz)
    picks = sorted(i for i in ids if i.startswith("governor-pick-"))
    assert picks == sorted([f"governor-pick-{k}", f"governor-pick-{levels + k}"])
    assert (f"governor: {pick.cpu_khz // 1000} MHz / {pick.gpu_hz // 1_000_000} MHz / "
            f"mem {pick.mem_hz / 1e6:g} MHz") in text
    assert est.latency_ms(pick.cpu_khz, pick.gpu_hz, mem_hz=pick.mem_hz)[0] <= 30.0
    # a slower memory is slower at the same (cpu, gpu): the panels differ
    s = plot_grid(est, 30.0, tmp / "lat3.png")
    assert s.panels == levels and s.elements["picks"] == 0 and s.elements["memory_levels"] == levels
    fast, slow = (est.latency_ms(1_800_000, 800_000_000, mem_hz=m)[0] for m in (board.memory.frequencies_hz[-1],
                                                                             board.memory.frequencies_hz[0]))
    assert slow > fast


def test_grid_refuses_a_board_with_another_memory_table(files3, tmp_path):
    tmp, *_ = files3
    out = run_cli("plot", "grid", tmp / "yolo3.est.json", "--deadline-ms", 30, "--board", "orin_nano",
                  "-o", tmp_path / "x.png")
    assert out.returncode == 2 and "its frequency tables are not the estimator's" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_timeline_draws_the_memory_level(files3):
    tmp, _, board = files3
    out = run_cli("plot", "run", tmp / "run3.jsonl", "-o", tmp / "run3.svg")
    assert out.returncode == 0, out.stderr
    ids = svg_ids(tmp / "run3.svg")
    assert {"freq-cpu", "freq-gpu", "freq-mem", "latency-cam"} <= set(ids)
    assert svg_axes(tmp / "run3.svg") == 4  # cpu, gpu, mem, one app
    assert "MEM MHz" in svg_text(tmp / "run3.svg")
