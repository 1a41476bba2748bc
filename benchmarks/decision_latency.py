"""How long an app waits for a decision (issue 11's speed targets).

* in-process: ``Governor.before_frame`` with no frequency change (target p99 < 20 us); the
  ``after_frame`` that follows each frame is timed too (no target: the correction's update);
* over the socket: a client's ``before_frame`` round trip to the daemon running as its own
  process (target p99 < 200 us);
* in-process, shared: 32 apps taking turns with 8 frames of other apps in flight (their deadlines
  and GPU queueing are part of every decision: the case a daemon under load sees), no target of
  its own: what the 32 x 120 fps case costs per decision without the socket;
* load: 32 client processes at 120 fps each (before_frame, then the report sent as
  ``GovernorClient.frame`` sends it) for a few seconds: 100% of the frames served on schedule (the
  decision within the frame's 1/fps slot) and none lost (every request answered), with the
  round-trip percentiles under load. The clients connect first and start their schedules together,
  each at its own phase of the period (as apps started at different times run): the steady state,
  not 32 interpreters forking on two cores (until 2026-11-25 the schedules started as each process
  came up, and the first 250 ms held every late frame of the 1000 ms case). Likewise a client
  ends its run (its last reply, closing, handing its counts to this process, exiting) only once
  every schedule has ended: 32 interpreters doing that on two cores while the others run their
  last frames is the benchmark's own load, not the daemon's (measured on 2026-11-26: 12-18 frames
  late in the last 10 ms, none with the end held). The late frames
  are counted apart for the first 100 ms of each schedule (the onset: 32 apps from idle within one
  period, the point raised in a few writes as their queue builds) and after. Twice: at the 20 ms
  deadline (32 apps' GPU work queued on one GPU leaves most frames infeasible and moves the
  point: frequency writes, through the in-process virtual backend ~2-4 ms of the daemon's CPU
  each; with ``--fuse`` the mount's process does that work), and at 1000 ms (``load_no_change``:
  the cheapest point serves every frame in flight, so request handling alone is measured).

The machine's load average is recorded before and after (other work on a small machine moves
the tails); run it more than once. Prints JSON. ``--profile`` adds where the in-process time goes
(cProfile of the same calls, the functions of most own time) to the JSON.
``PYTHONPATH=. python benchmarks/decision_latency.py [--seconds 3] [--clients 32] [--fps 120] [--profile] [--fuse]``
(``--fuse``: the daemon on the Linux backend over the FUSE-mounted virtual board, as a board runs).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import multiprocessing as mp
import os
import pstats
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import yaml

from dvfs_schema.loading import load_board
from governor.app import fit_on_virtual_board
from governor.client import GovernorClient
from governor.core import Governor
from sysfs_backends.virtual.board import VirtualBoard
from sysfs_backends.virtual.fuse_mount import mounted

BOARD, MODEL = "sd888_phone", "yolo_tiny"
DEADLINE_MS = 20.0
ROOMY_DEADLINE_MS = 1000.0
START_LEAD_S = 0.05  # from every client connected to the first frame due
ONSET_S = 0.1  # the start of each schedule whose late frames are counted apart


def pct(samples: list[float]) -> dict:
    us = np.array(samples) * 1e6
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1),
            "n": len(samples)}


def in_process(root: Path, n: int = 20000) -> dict:
    board = load_board(BOARD)
    vb = VirtualBoard(root / "inproc", board)
    gov = Governor(vb.backend(root / "inproc.json"), board, {MODEL: fit_on_virtual_board(board, MODEL)})
    samples, cpu, after, changes = [], [], [], 0
    with gov:
        for _ in range(200):  # settle the correction
            d = gov.before_frame(MODEL, DEADLINE_MS)
            gov.after_frame(d.frame, d.predicted_ms * 0.95)
        for _ in range(n):
            c0 = time.thread_time()
            t0 = time.perf_counter()
            d = gov.before_frame(MODEL, DEADLINE_MS)
            t1 = time.perf_counter()
            c1 = time.thread_time()
            changes += d.changed
            gov.after_frame(d.frame, d.predicted_ms * 0.95)
            t2 = time.perf_counter()
            if not d.changed:  # the target is for frames without a frequency change
                samples.append(t1 - t0)
                cpu.append(c1 - c0)
            after.append(t2 - t1)
    out = pct(samples)
    out["frequency_changes"] = changes
    out["after_frame"] = pct(after)
    # the same calls in CPU time of the calling thread: what a decision costs, without the waits
    # for a core that other work on a busy machine adds to the wall-clock tail
    out["cpu_time"] = pct(cpu)
    return out


def in_process_shared(root: Path, n: int = 6000, apps: int = 32, in_flight: int = 8) -> dict:
    """Apps taking turns, each frame reported once ``in_flight`` later frames have started."""
    board = load_board(BOARD)
    vb = VirtualBoard(root / "shared", board)
    gov = Governor(vb.backend(root / "shared.json"), board, {MODEL: fit_on_virtual_board(board, MODEL)})
    samples, after, changes = [], [], 0
    with gov:
        open_frames = []
        for i in range(n + 500):
            t0 = time.perf_counter()
            d = gov.before_frame(MODEL, DEADLINE_MS, app=f"app{i % apps}")
            t1 = time.perf_counter()
            open_frames.append(d)
            if i >= 500:  # settled: every app has a correction and the queue is full
                changes += d.changed
                if not d.changed:
                    samples.append(t1 - t0)
            if len(open_frames) > in_flight:
                done = open_frames.pop(0)
                t2 = time.perf_counter()
                gov.after_frame(done.frame, done.predicted_ms * 0.95)
                if i >= 500:
                    after.append(time.perf_counter() - t2)
    out = pct(samples)
    out |= {"apps": apps, "frames_in_flight": in_flight, "frequency_changes": changes, "after_frame": pct(after)}
    return out


def profiled(fn, *args) -> tuple[dict, list[str]]:
    """``fn(*args)`` under cProfile: its result and the 12 functions of most own time."""
    prof = cProfile.Profile()
    prof.enable()
    result = fn(*args)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
    lines = text.getvalue().splitlines()
    start = next((k for k, line in enumerate(lines) if line.lstrip().startswith("ncalls")), len(lines))
    return result, [" ".join(line.split()) for line in lines[start:] if line.strip()]


def slots(seconds: float, fps: float) -> int:
    """Frames one client's schedule holds: one every 1 / fps from its start, under ``seconds``."""
    return math.ceil(seconds * fps - 1e-9)


def client_worker(sock: str, fps: float, seconds: float, queue, deadline_ms: float, ready, phase: float,
                  finished) -> None:
    """One app: a frame due every 1 / fps; a frame is on schedule when its decision came within its
    slot (before the next frame is due). A client that falls behind runs every frame still, late.
    Its schedule starts once every client is connected (``ready``, a barrier), ``phase`` of a
    period after a common lead: the steady state of 32 running apps, not 32 interpreters starting
    on two cores (each app's first frame is still in its schedule)."""
    client = GovernorClient(sock, app=f"client{mp.current_process().pid}")
    period = 1.0 / fps
    sent = answered = frames = on_time = 0
    rtts, late_slots = [], []
    ready.wait()
    start = time.monotonic() + START_LEAD_S + phase * period
    for k in range(slots(seconds, fps)):
        due = start + k * period
        time.sleep(max(0.0, due - time.monotonic()))
        t0 = time.perf_counter()
        sent += 1
        try:
            d = client.before_frame(MODEL, deadline_ms)  # raises on error, timeout or hang-up
            answered += 1 + (k > 0)  # and the previous frame's report, whose reply was read first
            rtts.append(time.perf_counter() - t0)
            if time.monotonic() <= due + period:
                on_time += 1
            else:
                late_slots.append(k)
            sent += 1
            # as GovernorClient.frame reports: without waiting, its reply read before the next one
            client.after_frame(d["frame"], d["predicted_ms"] * 0.95, wait=False)
            frames += 1
        except (OSError, RuntimeError, ValueError):
            break
    try:  # the end of the run (the last reply, closing, the counts to the parent, exiting) waits
        # until every schedule has ended (see the module's docstring)
        finished.wait(timeout=seconds + 60)
    except threading.BrokenBarrierError:
        pass
    try:  # the last report's reply, read before this one's
        client.status()
        answered += frames > 0
    except (OSError, RuntimeError, ValueError):
        pass
    client.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put((sent, answered, rtts, frames, usage.ru_utime + usage.ru_stime, on_time, late_slots))


def load(sock: str, daemon_pid: int, args, deadline_ms: float) -> dict:
    """``args.clients`` client processes at ``args.fps`` for ``args.seconds``, one app each."""
    queue = mp.Queue()
    ready = mp.Barrier(args.clients + 1)
    finished = mp.Barrier(args.clients)
    # phases spread evenly over a period (fixed, so runs compare): apps started at different times
    procs = [mp.Process(target=client_worker, args=(sock, args.fps, args.seconds, queue, deadline_ms, ready,
                                                    k / args.clients, finished))
             for k in range(args.clients)]
    with GovernorClient(sock, app="bench-status") as c:
        before = c.status()
    for p in procs:
        p.start()
    ready.wait(timeout=60)  # every client connected: the schedules start together
    t0 = time.monotonic()
    daemon_cpu0 = cpu_s(daemon_pid)
    results = [queue.get(timeout=args.seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    wall = time.monotonic() - t0
    daemon_cpu = cpu_s(daemon_pid) - daemon_cpu0
    with GovernorClient(sock, app="bench-status") as c:
        after = c.status()
    infeasible = sum(a["infeasible"] for a in after["apps"].values()) - sum(
        a["infeasible"] for a in before["apps"].values())
    clients_cpu = sum(r[4] for r in results)
    sent = sum(r[0] for r in results)
    answered = sum(r[1] for r in results)
    frames = sum(r[3] for r in results)
    on_time = sum(r[5] for r in results)
    onset_slots = slots(ONSET_S, args.fps)
    late_onset = sum(k < onset_slots for r in results for k in r[6])
    scheduled = args.clients * slots(args.seconds, args.fps)
    return {
        "clients": args.clients, "fps_each": args.fps, "seconds": args.seconds, "deadline_ms": deadline_ms,
        "requests": sent, "answered": answered, "lost": sent - answered,
        "requests_per_s": round(sent / wall, 1),
        "frames_per_s_target": args.clients * args.fps,
        "frames_per_s_achieved": round(frames / args.seconds, 1),
        "frames_scheduled": scheduled, "frames_decided_on_schedule": on_time,
        # a frame is served when its decision came within its slot (1 / fps)
        "served_ratio": round(on_time / scheduled, 4),
        "late_in_first_100_ms": late_onset,
        "late_after_first_100_ms": scheduled - on_time - late_onset,
        # points the daemon wrote meanwhile (each a batch of stores and its settled read-back, which
        # the frames asked during it wait for) and frames it found no point to meet
        "frequency_writes": after["writes"] - before["writes"],
        "infeasible_frames": infeasible,
        "before_frame_round_trip": pct([x for r in results for x in r[2]]),
        # CPU per frame served (load-independent): the daemon's, and the 32 clients' own
        "daemon_cpu_us_per_frame": round(daemon_cpu / max(frames, 1) * 1e6, 1),
        "clients_cpu_us_per_frame": round(clients_cpu / max(frames, 1) * 1e6, 1),
        "daemon_cpu_share": round(daemon_cpu / wall, 3),
    }


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used: what a request costs, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--fps", type=float, default=120.0)
    ap.add_argument("--profile", action="store_true", help="add cProfile's top functions of the in-process runs")
    ap.add_argument("--fuse", action="store_true",
                    help="the daemon on the Linux backend over the virtual board mounted as a file system "
                         "(the way a board runs: writes are system calls served by another process), "
                         "not the in-process virtual backend")
    args = ap.parse_args()
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(dir=base) as d, ExitStack() as stack:
        root = Path(d)
        result = {"benchmark": "decision_latency", "in_process_before_frame": in_process(root),
                  "in_process_shared": in_process_shared(root)}
        if args.profile:  # separate runs: the profiler's overhead stays out of the figures above
            for sub in ("p1", "p2"):
                (root / sub).mkdir()
            result["profile"] = {"in_process": profiled(in_process, root / "p1", 5000)[1],
                                 "in_process_shared": profiled(in_process_shared, root / "p2", 3000)[1]}
        sock = root / "gov.sock"
        cfg = {"board": BOARD, "socket": str(sock), "log_level": "warning",
               "backend": {"kind": "virtual", "virtual_root": str(root / "vb"),
                           "state_file": str(root / "saved.json")},
               "models": {MODEL: {"simulate": MODEL}}}
        if args.fuse:  # raises FuseUnavailable (with the reason) where FUSE cannot work
            board = load_board(BOARD)
            VirtualBoard(root / "vb", board)
            mount = stack.enter_context(mounted(root / "vb", root / "sys"))
            (root / "est.json").write_text(fit_on_virtual_board(board, MODEL).to_json())
            cfg["backend"] = {"kind": "linux", "sysfs_root": str(mount), "state_file": str(root / "saved.json")}
            cfg["models"] = {MODEL: {"estimator": str(root / "est.json")}}
        result["daemon_backend"] = "linux over FUSE" if args.fuse else "virtual (in process)"
        (root / "gov.yaml").write_text(yaml.safe_dump(cfg))
        daemon = subprocess.Popen([sys.executable, "-m", "governor.cli", "run", "--config", str(root / "gov.yaml")])
        try:
            for _ in range(600):
                if sock.exists():
                    break
                time.sleep(0.05)
            client = GovernorClient(str(sock), app="bench")
            rtts = []
            for i in range(5000):
                t0 = time.perf_counter()
                dec = client.before_frame(MODEL, DEADLINE_MS)
                if i >= 200:
                    rtts.append(time.perf_counter() - t0)
                client.after_frame(dec["frame"], dec["predicted_ms"] * 0.95)
            client.close()
            result["socket_before_frame_round_trip"] = pct(rtts)
            result["load"] = load(str(sock), daemon.pid, args, DEADLINE_MS)
            # the same flood where the cheapest point serves every frame in flight (a deadline far
            # from the queue of 32 apps' GPU work): request handling alone, no frequency writes
            result["load_no_change"] = load(str(sock), daemon.pid, args, ROOMY_DEADLINE_MS)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    result["machine"] = {"cpus": os.cpu_count(), "load_average_before": load_before,
                         "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    result["targets_met"] = {
        "in_process_p99_lt_20us": result["in_process_before_frame"]["p99_us"] < 20,
        "socket_p99_lt_200us": result["socket_before_frame_round_trip"]["p99_us"] < 200,
        "all_frames_served": all(result[k]["frames_decided_on_schedule"] == result[k]["frames_scheduled"]
                                 for k in ("load", "load_no_change")),
        "no_request_lost": result["load"]["lost"] == 0 and result["load_no_change"]["lost"] == 0,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
