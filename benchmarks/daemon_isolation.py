"""Does one misbehaving client (or a stalled phone) slow the other apps down?

The daemon runs as its own process (`dvfs-gov run`) driving the virtual phone over the real ADB
protocol. Three well-behaved apps (separate processes) each run yolo frames at ~100 fps
(``before_frame`` + ``after_frame``); their ``before_frame`` round trips are measured in four phases
of the same run:

* quiet: nothing else happens (the reference);
* grid_burst: one client pipelines 600 language-model requests, each at a new context length
  (each needs a new ~20 ms grid);
* flood: one client pipelines ``before_frame`` requests as fast as the socket takes them;
* stalled_backend: the phone answers every command 2 s late, and one app keeps asking for pairs
  that need a write.

Prints JSON: per phase the other apps' median / p99 / max round trip (ms) and p99 relative to the
quiet phase (target: within 2x). ``python benchmarks/daemon_isolation.py [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from dvfs_schema.loading import load_board
from governor.app import fit_on_virtual_board
from sysfs_backends.virtual.adb_device import VirtualAdbDevice
from sysfs_backends.virtual.board import VirtualBoard

BOARD = "sd888_phone"
VICTIMS = 3
FPS = 100.0
STALL_S = 2.0


def _connect(path: str):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    return s, s.makefile("rb")


def _ask(s, f, msg: dict) -> dict:
    s.sendall(json.dumps(msg).encode() + b"\n")
    return json.loads(f.readline())


def victim(path: str, app: str, seconds: float, out: mp.Queue) -> None:
    """A well-behaved app: one yolo frame every 1/FPS s; records its before_frame round trips."""
    s, f = _connect(path)
    rtts, t_end = [], time.monotonic() + seconds
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        d = _ask(s, f, {"op": "before_frame", "model": "yolo", "deadline_ms": 30, "app": app})
        rtts.append(time.perf_counter() - t0)
        _ask(s, f, {"op": "after_frame", "frame": d["frame"], "latency_ms": 18.0})
        time.sleep(max(0.0, 1 / FPS - (time.perf_counter() - t0)))
    s.close()
    out.put(rtts)


def grid_burst(path: str, seconds: float, out: mp.Queue, base: int) -> None:
    s, f = _connect(path)
    t0 = time.perf_counter()
    s.sendall(b"".join(json.dumps({"op": "before_frame", "model": "llm", "deadline_ms": 30, "app": "burst",
                                   "context_len": base + 64 * i}).encode() + b"\n" for i in range(600)))
    ok = sum(bool(json.loads(f.readline())["ok"]) for _ in range(600))
    out.put({"requests": 600, "answered_ok": ok, "took_s": round(time.perf_counter() - t0, 2)})
    s.close()


def flood(path: str, seconds: float, out: mp.Queue) -> None:
    s, f = _connect(path)
    line = b'{"op":"before_frame","model":"yolo","deadline_ms":30,"app":"flood"}\n'
    answered = [0]

    def reader():
        try:
            while f.readline():
                answered[0] += 1
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    sent, t_end = 0, time.monotonic() + seconds
    while time.monotonic() < t_end:
        s.sendall(line * 500)
        sent += 500
    time.sleep(0.5)
    s.close()
    out.put({"sent": sent, "answered": answered[0], "per_s": round(answered[0] / seconds)})


def changer(path: str, seconds: float, out: mp.Queue) -> None:
    """An app whose deadlines swing, so most of its frames need a write (to a stalled phone)."""
    s, f = _connect(path)
    waits, noted, t_end, i = [], 0, time.monotonic() + seconds, 0
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        d = _ask(s, f, {"op": "before_frame", "model": "yolo", "deadline_ms": 9 if i % 2 else 200, "app": "swing"})
        waits.append(time.perf_counter() - t0)
        noted += any("not applied" in n for n in d.get("notes", []))
        _ask(s, f, {"op": "after_frame", "frame": d["frame"], "latency_ms": 10.0})
        i += 1
        time.sleep(0.02)
    s.close()
    out.put({"frames": i, "answered_with_not_applied_note": noted,
             "max_wait_ms": round(max(waits) * 1e3, 1)})


def phase(path: str, seconds: float, bad=None, args=()) -> dict:
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=victim, args=(path, f"app{i}", seconds, q)) for i in range(VICTIMS)]
    for p in procs:
        p.start()
    bad_q: mp.Queue = ctx.Queue()
    bad_p = None
    if bad is not None:
        time.sleep(0.3)  # the victims are running before the trouble starts
        bad_p = ctx.Process(target=bad, args=(path, seconds - 0.6, bad_q, *args))
        bad_p.start()
    rtts = [x for _ in procs for x in q.get(timeout=seconds + 120)]
    for p in procs:
        p.join()
    extra = bad_q.get(timeout=120) if bad_p is not None else None
    if bad_p is not None:
        bad_p.join()
    ms = np.array(rtts) * 1e3
    out = {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
           "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 2)}
    if extra is not None:
        out["misbehaving"] = extra
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    board = load_board(BOARD)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for name, spec in (("yolo", "yolo_tiny"), ("llm", "smollm_135m")):
            (tmp / f"{name}.json").write_text(fit_on_virtual_board(board, spec).to_json())
        vb = VirtualBoard(tmp / "phone", board)
        with VirtualAdbDevice(vb.root) as dev:
            cfg = {"board": BOARD, "socket": str(tmp / "gov.sock"), "log_level": "warning",
                   "backend": {"kind": "android", "state_file": str(tmp / "saved.json"),
                               "adb": {"address": dev.address, "key_path": str(tmp / "adbkey"),
                                       "command_timeout_s": 30.0}},
                   "models": {"yolo": {"estimator": str(tmp / "yolo.json")},
                              "llm": {"estimator": str(tmp / "llm.json")}}}
            (tmp / "gov.yaml").write_text(yaml.safe_dump(cfg))
            log = open(tmp / "daemon.log", "w")
            daemon = subprocess.Popen([sys.executable, "-m", "governor.cli", "run", "--config", str(tmp / "gov.yaml")],
                                      stdout=subprocess.DEVNULL, stderr=log)
            path = str(tmp / "gov.sock")
            try:
                for _ in range(600):
                    try:
                        _connect(path)[0].close()
                        break
                    except OSError:
                        time.sleep(0.05)
                time.sleep(2.0)  # the grid worker process is up
                results = {"quiet": phase(path, args.seconds)}
                results["grid_burst"] = phase(path, args.seconds, grid_burst, (100_000,))
                results["flood"] = phase(path, args.seconds, flood)
                dev.stall_s = STALL_S
                results["stalled_backend"] = phase(path, args.seconds, changer)
                dev.stall_s = 0.0
            finally:
                dev.stall_s = 0.0
                daemon.send_signal(signal.SIGTERM)
                rc = daemon.wait(timeout=120)
    quiet = results["quiet"]["p99_ms"]
    for r in results.values():
        r["p99_vs_quiet"] = round(r["p99_ms"] / quiet, 2)
    print(json.dumps({
        "benchmark": "daemon_isolation", "board": BOARD, "victim_apps": VICTIMS, "victim_fps": FPS,
        "seconds_per_phase": args.seconds, "stall_s": STALL_S, "target": "victims' p99 within 2x of quiet",
        "phases": results,
        "within_target": {k: r["p99_vs_quiet"] <= 2.0 for k, r in results.items() if k != "quiet"},
        "daemon_exit": rc,
    }, indent=1))


if __name__ == "__main__":
    main()
