"""`dvfs-gov export-trace`: the output checked against the Chrome JSON trace-event format's rules
(the format ui.perfetto.dev and chrome://tracing read) with a JSON Schema written here, plus the
rules a schema cannot say (balanced B/E, properly nested slices per thread, named tracks)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")

from dvfs_schema.loading import load_board, load_model_spec  # noqa: E402
from estimator.model import Estimator  # noqa: E402
from estimator.planner import plan_points  # noqa: E402
from estimator.profile import parse_profile  # noqa: E402
from governor.plots import bubbles_ns  # noqa: E402
from governor.recording import FrameRecord, RunRecorder, header_for, read_run  # noqa: E402
from governor.trace_export import profile_trace, run_trace  # noqa: E402
from sysfs_backends.virtual.simulator import Simulator  # noqa: E402

CLI = [sys.executable, "-m", "governor.cli"]
BOARD = "sd888_phone"

_phase = lambda *ph: {"properties": {"ph": {"enum": list(ph)}}, "required": ["ph"]}  # noqa: E731
EVENT_SCHEMA = {
    "type": "object",
    "required": ["name", "ph", "pid", "tid"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "ph": {"enum": ["X", "B", "E", "C", "i", "I", "M"]},
        "cat": {"type": "string"},
        "pid": {"type": "integer", "minimum": 0},
        "tid": {"type": "integer", "minimum": 0},
        "ts": {"type": "number", "minimum": 0},  # microseconds
        "dur": {"type": "number", "minimum": 0},  # microseconds
        "args": {"type": "object"},
    },
    "allOf": [
        {"if": _phase("X"), "then": {"required": ["ts", "dur"]}},
        {"if": _phase("B", "E"), "then": {"required": ["ts"]}},
        {"if": _phase("C"), "then": {"required": ["ts", "args"], "properties": {
            "args": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "number"}}}}},
        {"if": _phase("i", "I"), "then": {"required": ["ts"], "properties": {"s": {"enum": ["g", "p", "t"]}}}},
        {"if": _phase("M"), "then": {"required": ["args"], "properties": {
            "name": {"enum": ["process_name", "thread_name", "process_sort_index", "thread_sort_index",
                              "process_labels"]}}}},
        {"if": {"properties": {"ph": {"const": "M"}, "name": {"enum": ["process_name", "thread_name"]}},
                "required": ["ph", "name"]},
         "then": {"properties": {"args": {"required": ["name"], "properties": {"name": {"type": "string"}}}}}},
        {"if": {"properties": {"ph": {"const": "M"},
                               "name": {"enum": ["process_sort_index", "thread_sort_index"]}},
                "required": ["ph", "name"]},
         "then": {"properties": {"args": {"required": ["sort_index"],
                                          "properties": {"sort_index": {"type": "integer"}}}}}},
    ],
}
TRACE_SCHEMA = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "traceEvents": {"type": "array", "minItems": 1, "items": EVENT_SCHEMA},
        "displayTimeUnit": {"enum": ["ms", "ns"]},
        "otherData": {"type": "object"},
    },
}


def validate_trace(trace: dict) -> None:
    """The schema, then the rules across events."""
    jsonschema.validate(trace, TRACE_SCHEMA)
    events = trace["traceEvents"]
    named_threads = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    named_procs = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    stacks: dict[tuple[int, int], list] = defaultdict(list)
    for e in sorted((e for e in events if e["ph"] in ("B", "E")), key=lambda e: e["ts"]):
        key = (e["pid"], e["tid"])
        if e["ph"] == "B":
            stacks[key].append(e)
        else:
            assert stacks[key], f"E without B on {key}"
            stacks[key].pop()
    assert not any(stacks.values()), "unbalanced B/E"
    slices: dict[tuple[int, int], list] = defaultdict(list)
    for e in events:
        if e["ph"] in ("X", "B", "i", "I", "C"):
            assert e["pid"] in named_procs, f"process {e['pid']} has no process_name"
        if e["ph"] in ("X", "B", "i", "I"):
            assert (e["pid"], e["tid"]) in named_threads, f"track {(e['pid'], e['tid'])} has no thread_name"
        if e["ph"] == "X":
            slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for key, spans in slices.items():  # slices on one thread nest or follow, never partly overlap
        open_ends: list[float] = []
        for a, b in sorted(spans, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1] <= a + 1e-6:
                open_ends.pop()
            assert not open_ends or b <= open_ends[-1] + 1e-6, f"partly overlapping slices on {key}"
            open_ends.append(b)


def test_validator_rejects_what_the_format_forbids():
    good = {"traceEvents": [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "p"}},
                            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "t"}},
                            {"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 5}]}
    validate_trace(good)
    for broken in ({"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": 0},  # no dur
                   {"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": -1, "dur": 1},  # negative
                   {"name": "a", "ph": "X", "pid": "1", "tid": 1, "ts": 0, "dur": 1},  # pid not int
                   {"name": "c", "ph": "C", "pid": 1, "tid": 0, "ts": 0, "args": {"v": "x"}},  # counter not number
                   {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {}},  # no name
                   {"name": "b", "ph": "B", "pid": 1, "tid": 1, "ts": 9},  # unbalanced
                   {"name": "o", "ph": "X", "pid": 1, "tid": 1, "ts": 3, "dur": 5}):  # partly overlaps "a"
        with pytest.raises((jsonschema.ValidationError, AssertionError)):
            validate_trace({"traceEvents": [*good["traceEvents"], broken]})


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    board = load_board(BOARD)
    sim = Simulator(board, load_model_spec("yolo_tiny"))
    pairs = plan_points(board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz)
    prof = sim.profile(pairs, 2, None, np.random.default_rng(1))
    (tmp / "p.json").write_text(json.dumps(prof))
    est = Estimator.fit(parse_profile(prof))
    (tmp / "e.json").write_text(est.to_json())
    return tmp, parse_profile(prof), est


def test_profile_trace_measured_next_to_predicted(profiled):
    _, prof, est = profiled
    trace = profile_trace(prof, 3, est)
    validate_trace(trace)
    events = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert procs[1].startswith("measured") and procs[2].startswith("predicted")
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {threads[(1, 1)], threads[(1, 2)], threads[(1, 3)]} == {"host (launches, host ops)", "device (kernels)",
                                                                   "device idle (bubbles)"}
    run = prof.runs[3]
    gpu_layers = [x for x in run.layers if x.kind == "gpu"]
    for pid in (1, 2):
        kernels = [e for e in events if e["pid"] == pid and e.get("cat") == "kernel"]
        assert [e["name"] for e in kernels] == [x.name for x in gpu_layers]
        host = [e for e in events if e["pid"] == pid and e["tid"] == 1 and e["ph"] == "X"]
        assert len(host) == len(run.layers)
    measured_kernels = [e for e in events if e["pid"] == 1 and e.get("cat") == "kernel"]
    # microseconds from the run's start, exactly the profile's ns / 1000
    assert [(e["ts"], e["dur"]) for e in measured_kernels] == [
        (round(x.gpu_start_ns / 1000, 3), round((x.gpu_end_ns - x.gpu_start_ns) / 1000, 3)) for x in gpu_layers]
    bubbles = [e for e in events if e["pid"] == 1 and e.get("cat") == "bubble"]
    assert len(bubbles) == len(bubbles_ns(run.layers, run.latency_ns)) > 0
    other = trace["otherData"]
    assert abs(other["predicted_latency_ms"] / other["measured_latency_ms"] - 1) < 0.1
    # the predicted timeline is the estimator's own latency
    assert other["predicted_latency_ms"] == pytest.approx(
        float(est.latency_ms(run.cpu_khz, run.gpu_hz)[0]), rel=1e-6)


def test_estimator_timeline_is_a_valid_run_with_the_estimated_latency(profiled):
    _, prof, est = profiled
    c, g = est.grid_pairs
    runs = [est.timeline(int(ci), int(gi)) for ci, gi in zip(c[::17], g[::17], strict=True)]
    # every rule of the profile format holds for the predicted runs (host order, device order, ...)
    parse_profile({"format": prof.format, "model": prof.model, "device": "predicted",
                   "frequencies": {"cpu_khz": est.data.cpu_khz, "gpu_hz": est.data.gpu_hz}, "runs": runs})
    for run in runs:
        assert run["latency_ns"] / 1e6 == pytest.approx(float(est.latency_ms(run["cpu_khz"], run["gpu_hz"])[0]))
        busy = sum(x["gpu_end_ns"] - x["gpu_start_ns"] for x in run["layers"] if x["kind"] == "gpu")
        br = est.breakdown(run["cpu_khz"], run["gpu_hz"])
        assert busy / 1e6 == pytest.approx(float(br.gpu_busy_ms[0]), abs=1e-4)


def test_run_trace_counters_and_frames(tmp_path):
    board = load_board(BOARD)
    with RunRecorder(tmp_path / "r.jsonl", header_for(board, ["yolo"])) as rec:
        for n in range(12):
            rec.frame(FrameRecord(frame=n, t_s=0.05 * n, app="cam" if n % 2 else "lm", model="yolo",
                                  deadline_ms=20.0, context_len=None if n % 2 else 300 + n,
                                  cpu_khz=1_000_000 + 1000 * n, gpu_hz=540_000_000, predicted_ms=18.0,
                                  latency_ms=23.0 if n in (3, 8) else 15.0, missed=n in (3, 8),
                                  feasible=n != 8, capped=n >= 6))
    trace = run_trace(read_run(tmp_path / "r.jsonl"))
    validate_trace(trace)
    events = trace["traceEvents"]
    freq = [e for e in events if e["ph"] == "C" and e["name"] == "frequency in force (MHz)"]
    assert [e["args"]["cpu_mhz"] for e in freq] == [1000 + n for n in range(12)]
    assert all(e["args"]["gpu_mhz"] == 540 for e in freq)
    caps = [e["args"]["capped"] for e in events if e["ph"] == "C" and e["name"] == "capped"]
    assert caps == [0, 1]  # a counter step only where it changes
    frames = [e for e in events if e["ph"] == "X"]
    assert len(frames) == 12 and all(e["args"]["deadline_ms"] == 20.0 for e in frames)
    assert [e["ts"] for e in frames] == [round(0.05 * n * 1e6, 3) for n in range(12)]
    missed = [e for e in frames if e["args"]["missed"]]
    assert [e["args"]["frame"] for e in missed] == [3, 8]
    assert all("MISSED" in e["name"] and "missed" in e["cat"] for e in missed)
    assert "(infeasible)" in missed[1]["name"]
    instants = [e for e in events if e["ph"] == "i"]
    assert [e["ts"] for e in instants] == [round(0.15e6 + 20e3, 3), round(0.4e6 + 20e3, 3)]
    tracks = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert tracks == {"cam", "lm"}


def test_export_trace_cli(profiled, tmp_path):
    tmp, *_ = profiled
    out = subprocess.run([*CLI, "export-trace", tmp / "p.json", "--estimator", tmp / "e.json", "--run", "2", "-o",
                          tmp_path / "t.json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ui.perfetto.dev" in out.stdout
    validate_trace(json.loads((tmp_path / "t.json").read_text()))
    with RunRecorder(tmp_path / "r.jsonl", header_for(load_board(BOARD), ["yolo"])):
        pass
    bad = subprocess.run([*CLI, "export-trace", tmp_path / "r.jsonl", "--estimator", tmp / "e.json", "-o",
                          tmp_path / "x.json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--estimator goes with a profile" in bad.stderr
    other = json.loads((tmp / "p.json").read_text())
    other["runs"] = [{**r, "layers": r["layers"][:-1]} for r in other["runs"]]
    (tmp_path / "short.json").write_text(json.dumps(other))
    bad = subprocess.run([*CLI, "export-trace", tmp_path / "short.json", "--estimator", tmp / "e.json", "-o",
                          tmp_path / "x.json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "fitted on other layers" in bad.stderr and "Traceback" not in bad.stderr


def test_run_trace_has_the_memory_level_and_the_rails_samples(tmp_path):
    """A run on a board with a memory domain and a power rail: the memory level gets its own
    counter track in its unit (MB/s on the SD888's bus node) and each rail sample a power counter
    with the energy per frame over its interval (the governed demo records both)."""
    import json
    import os
    import subprocess
    import sys

    record = tmp_path / "demo.jsonl"
    out = subprocess.run([sys.executable, "-m", "governor", "demo", "--duration", "3", "--record", str(record)],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr
    run = read_run(record)
    assert run.power, "the demo's phone has a battery: its samples are recorded"
    trace = run_trace(run)
    validate_trace(trace)
    events = trace["traceEvents"]
    mem = [e for e in events if e["ph"] == "C" and e["name"] == "memory level (MB/s)"]
    in_time_order = sorted(run.frames, key=lambda f: f.t_s)
    assert len(mem) == len(run.frames) and [e["args"]["mem"] for e in mem] == [f.mem_hz for f in in_time_order]
    levels = load_board(BOARD).domain_tables["mem"]
    assert all(e["args"]["mem"] in levels for e in mem)
    power = [e for e in events if e["ph"] == "C" and e["name"].startswith("measured power")]
    sampled = [p for p in run.power if p.power_w is not None]
    assert len(power) == len(sampled) > 0
    assert [e["args"]["power_w"] for e in power] == [p.power_w for p in sampled]
    json.dumps(trace)  # what the viewer is given
