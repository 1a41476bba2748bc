"""Export to the Chrome JSON trace-event format, which ui.perfetto.dev (and chrome://tracing) opens.

Two sources:

* a profile: one process per timeline, "measured" (the profiled run) and, with an estimator,
  "predicted" (the estimator's replay at the same pair), each with a host thread (launches and host
  fallbacks), a device thread (kernels) and the device's idle gaps as "bubble" slices on a thread
  of their own;
* a run record: a "governor" process whose counter tracks are the frequencies in force per domain
  and the decision's predicted latency and deadline, and one thread per app with each frame as a
  slice (deadline, prediction and latency in its args; missed frames named and flagged, with an
  instant event where the deadline passed).

Timestamps (``ts``) and durations (``dur``) are microseconds, as the format requires.
"""

from __future__ import annotations

from typing import Any

from estimator.model import Estimator
from estimator.profile import Profile, Run
from governor.plots import bubbles_ns
from governor.recording import RunRecord

HOST_TID, DEVICE_TID, BUBBLE_TID = 1, 2, 3


def _meta(pid: int, name: str, tid: int | None = None, sort: int | None = None) -> list[dict]:
    if tid is None:
        events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}}]
        if sort is not None:
            events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                           "args": {"sort_index": sort}})
        return events
    events = [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}]
    if sort is not None:
        events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": sort}})
    return events


def _us(ns: float) -> float:
    return round(ns / 1000.0, 3)


def _run_events(pid: int, label: str, run: Run | dict, sort: int) -> list[dict]:
    """One run's timeline as slices of process ``pid``."""
    if isinstance(run, dict):
        run = Run.model_validate(run)
    events = _meta(pid, label, sort=sort)
    events += _meta(pid, "host (launches, host ops)", HOST_TID, 1)
    events += _meta(pid, "device (kernels)", DEVICE_TID, 2)
    events += _meta(pid, "device idle (bubbles)", BUBBLE_TID, 3)
    for i, x in enumerate(run.layers):
        args = {"layer": i, "kind": x.kind}
        events.append({"name": x.name if x.kind == "cpu" else f"launch {x.name}", "cat": "host" if x.kind == "cpu"
                       else "launch", "ph": "X", "pid": pid, "tid": HOST_TID, "ts": _us(x.cpu_start_ns),
                       "dur": _us(x.cpu_end_ns - x.cpu_start_ns), "args": args})
        if x.kind == "gpu":
            events.append({"name": x.name, "cat": "kernel", "ph": "X", "pid": pid, "tid": DEVICE_TID,
                           "ts": _us(x.gpu_start_ns), "dur": _us(x.gpu_end_ns - x.gpu_start_ns), "args": args})
    for a, b in bubbles_ns(run.layers, run.latency_ns):
        events.append({"name": "bubble", "cat": "bubble", "ph": "X", "pid": pid, "tid": BUBBLE_TID, "ts": _us(a),
                       "dur": _us(b - a), "args": {"idle_us": _us(b - a)}})
    events.append({"name": "inference", "cat": "run", "ph": "X", "pid": pid, "tid": 0, "ts": 0.0,
                   "dur": _us(run.latency_ns), "args": {"cpu_khz": run.cpu_khz, "gpu_hz": run.gpu_hz,
                                                        "context_len": run.context_len}})
    events += _meta(pid, "run", 0, 0)
    return events


def profile_trace(profile: Profile, run: int = 0, estimator: Estimator | None = None) -> dict:
    """The measured run ``run`` of ``profile`` and, with ``estimator``, its prediction at the same pair."""
    if not 0 <= run < len(profile.runs):
        raise ValueError(f"--run {run}: the profile has runs 0..{len(profile.runs) - 1}")
    r = profile.runs[run]
    events = _run_events(1, f"measured: {profile.model} @ cpu {r.cpu_khz} kHz, gpu {r.gpu_hz} Hz", r, 1)
    other: dict[str, Any] = {"source": "deadline-dvfs profile", "model": profile.model, "device": profile.device,
                             "run": run, "measured_latency_ms": r.latency_ns / 1e6}
    if estimator is not None:
        if [n for n in estimator.data.layer_names] != [x.name for x in r.layers]:
            raise ValueError("the estimator was fitted on other layers than the profile's (model "
                             f"{estimator.data.model!r} vs {profile.model!r})")
        predicted = estimator.timeline(r.cpu_khz, r.gpu_hz, r.context_len)
        events += _run_events(2, f"predicted: estimator @ cpu {r.cpu_khz} kHz, gpu {r.gpu_hz} Hz", predicted, 2)
        other["predicted_latency_ms"] = predicted["latency_ns"] / 1e6
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def run_trace(record: RunRecord) -> dict:
    """A governed run: frequencies and decisions as counter tracks, each frame as a slice per app."""
    gov_pid, apps_pid = 1, 2
    events = _meta(gov_pid, f"governor on {record.header.board}", sort=1)
    events += _meta(apps_pid, "apps (frames)", sort=2)
    frames = sorted(record.frames, key=lambda f: f.t_s)
    apps = sorted({f.app for f in frames})
    tids = {app: n + 1 for n, app in enumerate(apps)}
    for app, tid in tids.items():
        events += _meta(apps_pid, app, tid, tid)
    last_capped = None
    mem_unit = next((d.unit for d in record.header.domains if d.name == "mem"), "Hz")
    for p in record.power:  # the rail's own samples (the governor's schedule, not per frame)
        if p.power_w is not None:
            args = {"power_w": p.power_w}
            if p.energy_j is not None and p.frames:
                args["energy_per_frame_mj"] = round(p.energy_j / p.frames * 1e3, 4)
            events.append({"name": f"measured power ({p.rail})", "ph": "C", "pid": gov_pid, "tid": 0,
                           "ts": round(p.t_s * 1e6, 3), "args": args})
    for f in frames:
        ts = round(f.t_s * 1e6, 3)
        freqs = {"cpu_mhz": f.cpu_khz / 1e3}
        if f.gpu_hz is not None:
            freqs["gpu_mhz"] = f.gpu_hz / 1e6
        if f.mem_hz is not None:  # its own track: the level is in the memory domain's unit
            events.append({"name": f"memory level ({mem_unit})", "ph": "C", "pid": gov_pid, "tid": 0, "ts": ts,
                           "args": {"mem": f.mem_hz}})
        events.append({"name": "frequency in force (MHz)", "ph": "C", "pid": gov_pid, "tid": 0, "ts": ts,
                       "args": freqs})
        events.append({"name": f"decision: {f.app}", "ph": "C", "pid": gov_pid, "tid": 0, "ts": ts,
                       "args": {"predicted_ms": f.predicted_ms, "deadline_ms": f.deadline_ms}})
        if f.capped != last_capped:
            events.append({"name": "capped", "ph": "C", "pid": gov_pid, "tid": 0, "ts": ts,
                           "args": {"capped": int(f.capped)}})
            last_capped = f.capped
        if f.power_w is not None:
            events.append({"name": "power (W)", "ph": "C", "pid": gov_pid, "tid": 0, "ts": ts,
                           "args": {"power_w": f.power_w}})
        args = {"frame": f.frame, "model": f.model, "deadline_ms": f.deadline_ms, "predicted_ms": f.predicted_ms,
                "latency_ms": f.latency_ms, "missed": f.missed, "feasible": f.feasible, "cpu_khz": f.cpu_khz,
                "gpu_hz": f.gpu_hz, "mem_hz": f.mem_hz, "context_len": f.context_len, "capped": f.capped}
        name = f"{f.model}{' MISSED' if f.missed else ''}{'' if f.feasible else ' (infeasible)'}"
        events.append({"name": name, "cat": "frame,missed" if f.missed else "frame", "ph": "X", "pid": apps_pid,
                       "tid": tids[f.app], "ts": ts, "dur": round(f.latency_ms * 1e3, 3), "args": args})
        if f.missed:
            events.append({"name": "deadline missed", "cat": "missed", "ph": "i", "s": "t", "pid": apps_pid,
                           "tid": tids[f.app], "ts": round(ts + f.deadline_ms * 1e3, 3),
                           "args": {"late_ms": round(f.latency_ms - f.deadline_ms, 4)}})
    other = {"source": "deadline-dvfs run record", "board": record.header.board, "frames": len(frames),
             "missed": sum(f.missed for f in frames)}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}
