"""Run records: the writer, the reader, the governor's hook and `dvfs-gov run/demo --record`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from dvfs_schema.loading import load_board
from governor.app import fit_on_virtual_board
from governor.client import GovernorClient
from governor.core import Governor
from governor.recording import FrameRecord, RecordError, RunRecorder, header_for, read_run
from sysfs_backends.virtual.board import VirtualBoard

CLI = [sys.executable, "-m", "governor.cli"]
BOARD = "sd888_phone"


def frame(n: int, **kw) -> FrameRecord:
    base = {"frame": n, "t_s": n * 0.01, "app": "cam", "model": "yolo", "deadline_ms": 20.0, "cpu_khz": 1_000_000,
            "gpu_hz": 500_000_000, "predicted_ms": 18.0, "latency_ms": 19.0, "missed": False, "feasible": True}
    return FrameRecord(**(base | kw))


def test_writer_flushes_every_frame_and_reader_round_trips(tmp_path):
    board = load_board(BOARD)
    path = tmp_path / "run.jsonl"
    rec = RunRecorder(path, header_for(board, ["yolo"], "virtual"))
    rec.frame(frame(1))
    # readable while the writer is still open: one flushed line per frame
    seen = read_run(path)
    assert seen.header.board == BOARD and [d.name for d in seen.header.domains] == list(board.domain_tables)
    assert seen.header.domains[0].frequencies == board.cpu.inference.frequencies_khz
    assert [f.frame for f in seen.frames] == [1]
    rec.frame(frame(2, latency_ms=25.0, missed=True, power_w=3.5))
    rec.close()
    back = read_run(path)
    assert [(f.frame, f.missed, f.power_w) for f in back.frames] == [(1, False, None), (2, True, 3.5)]
    assert all(json.loads(line)["type"] in ("header", "frame") for line in path.read_text().splitlines())


def test_concurrent_writers_never_interleave_lines(tmp_path):
    path = tmp_path / "run.jsonl"
    rec = RunRecorder(path, header_for(load_board(BOARD), ["yolo"]))

    def worker(k: int) -> None:
        for i in range(200):
            rec.frame(frame(k * 1000 + i, app=f"app{k}" + "x" * 200))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    frames = read_run(path).frames
    assert len(frames) == 800
    assert sorted(f.frame for f in frames) == sorted(k * 1000 + i for k in range(4) for i in range(200))


def test_torn_last_line_is_dropped_but_a_bad_line_is_named(tmp_path):
    path = tmp_path / "run.jsonl"
    with RunRecorder(path, header_for(load_board(BOARD), ["yolo"])) as rec:
        rec.frame(frame(1))
        rec.frame(frame(2))
    text = path.read_text()
    path.write_text(text + '{"type": "frame", "frame": 3, "t_s"')  # killed mid-write
    assert [f.frame for f in read_run(path).frames] == [1, 2]
    lines = text.splitlines()
    lines.insert(2, '{"type": "frame", "frame": "x"}')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=r"line 3: field 'frame'"):
        read_run(path)
    path.write_text('{"type": "frame"}\n')
    with pytest.raises(RecordError, match="line 1: not a deadline-dvfs.run/1 header"):
        read_run(path)


@pytest.fixture(scope="module")
def yolo():
    return fit_on_virtual_board(load_board(BOARD), "yolo_tiny")


def test_governor_records_each_finished_frame(tmp_path, yolo):
    board = load_board(BOARD)
    vb = VirtualBoard(tmp_path / "b", board)
    path = tmp_path / "run.jsonl"
    rec = RunRecorder(path, header_for(board, ["yolo"], "virtual"))
    with Governor(vb.backend(tmp_path / "s.json"), board, {"yolo": yolo}, recorder=rec) as gov:
        d1 = gov.before_frame("yolo", 20.0, app="cam")
        gov.after_frame(d1.frame, 12.0)
        d2 = gov.before_frame("yolo", 20.0, app="cam")
        gov.after_frame(d2.frame, 31.0)  # late
        vb.kernel.force_thermal_cap(True)
        d3 = gov.before_frame("yolo", 12.0, app="cam")
        gov.after_frame(d3.frame, 11.0)
        d4 = gov.before_frame("yolo", 20.0, app="other")  # never finished: not recorded
        del d4
    rec.close()
    frames = read_run(path).frames
    assert [f.frame for f in frames] == [d1.frame, d2.frame, d3.frame]
    first, late, capped = frames
    assert (first.cpu_khz, first.gpu_hz, first.predicted_ms, first.feasible) == (
        d1.cpu_khz, d1.gpu_hz, d1.predicted_ms, d1.feasible)
    assert (first.latency_ms, first.missed, first.app, first.deadline_ms) == (12.0, False, "cam", 20.0)
    assert late.missed and late.latency_ms == 31.0
    assert capped.capped and capped.conditions and set(capped.conditions.values()) == {"capped"}
    assert (capped.cpu_khz, capped.gpu_hz) == (d3.cpu_khz, d3.gpu_hz)
    assert first.t_s <= late.t_s <= capped.t_s


def test_run_record_cli_writes_frames_from_socket_clients(tmp_path):
    cfg = {"board": BOARD, "socket": str(tmp_path / "gov.sock"), "log_level": "warning",
           "backend": {"kind": "virtual", "virtual_root": str(tmp_path / "vb"),
                       "state_file": str(tmp_path / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}}}
    (tmp_path / "gov.yaml").write_text(yaml.safe_dump(cfg))
    record = tmp_path / "run.jsonl"
    proc = subprocess.Popen([*CLI, "run", "--config", str(tmp_path / "gov.yaml"), "--record", str(record)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read())
            if (tmp_path / "gov.sock").exists():
                try:
                    GovernorClient(str(tmp_path / "gov.sock")).close()
                    break
                except OSError:
                    pass
            time.sleep(0.05)
        with GovernorClient(str(tmp_path / "gov.sock"), app="cam") as client:
            for latency in (10.0, 30.0, 12.0):
                d = client.before_frame("yolo", 20.0)
                client.after_frame(d["frame"], latency)
            # flushed per frame: visible before the daemon stops
            assert len(read_run(record).frames) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    run = read_run(record)
    assert run.header.models == ["yolo"] and run.header.backend == "virtual"
    assert [f.latency_ms for f in run.frames] == [10.0, 30.0, 12.0]
    assert [f.missed for f in run.frames] == [False, True, False]
    assert all(f.app == "cam" and f.model == "yolo" and f.deadline_ms == 20.0 for f in run.frames)


def test_demo_record_feeds_plot_and_trace(tmp_path):
    record = tmp_path / "demo.jsonl"
    out = subprocess.run([*CLI, "demo", "--duration", "3", "--json", "--record", str(record)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    run = read_run(record)
    apps = {a["app"]: a["frames"] for a in result["apps"]}
    recorded = {app: sum(f.app == app for f in run.frames) for app in apps}
    # every frame the apps finished is in the daemon's record
    assert recorded == apps
    trace = tmp_path / "demo.trace.json"
    exp = subprocess.run([*CLI, "export-trace", str(record), "-o", str(trace)], capture_output=True, text=True,
                         timeout=60)
    assert exp.returncode == 0, exp.stderr
    slices = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(run.frames)
