"""`dvfs-gov demo`: the whole product on the virtual board, no hardware needed.

Processes: the governor daemon (`dvfs-gov run`), a 30 fps camera app running the detector, and an
assistant decoding tokens with a small language model whose context grows; all talk over the Unix
socket. The apps' frames run over time on the virtual board (``running_frame``): they queue on the
one GPU, and a frequency change reaches every frame in flight. Midway, background load slows the
host, then a thermal cap lowers both domains' maximum. At the end each app's frames, misses and
energy are compared with the same frames under the `performance` governor, a load-following
(schedutil-like) governor, the oracle and the oracle at the miss target (``shared_baselines``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import yaml

from dvfs_schema.loading import load_board, load_model_spec
from governor.baselines import FrameTrace, shared_baselines
from governor.client import GovernorClient, wait_for_daemon
from governor.config import GovernorSettings
from sysfs_backends.virtual.adb_device import VirtualAdbDevice
from sysfs_backends.virtual.board import VirtualBoard
from sysfs_backends.virtual.fuse_mount import FuseUnavailable, mounted
from sysfs_backends.virtual.simulator import Simulator

# The two share the GPU: a frame may wait for the other app's GPU work (up to ~10-13 ms at the top
# point), so each deadline leaves room for that. A camera frame must be done before the next one
# comes; the assistant streams 20 tokens a second, each within 30 ms.
APPS = [
    {"app": "camera", "model": "yolo_tiny", "deadline_ms": 33.0, "fps": 30.0, "context_start": None},
    {"app": "assistant", "model": "smollm_135m", "deadline_ms": 30.0, "fps": 20.0, "context_start": 256},
]
LOAD_PHASE = (0.30, 0.55)  # fractions of the run with background load on the host
THERMAL_PHASE = (0.50, 0.75)  # fractions of the run with the thermal cap forced
BACKGROUND_LOAD = 0.6


def run_demo(board_name: str = "sd888_phone", duration_s: float = 20.0,
             progress: Callable[[str], None] | None = None, backend: str = "virtual",
             record: str | os.PathLike | None = None) -> dict:
    """``record``: where the daemon writes its run record (`dvfs-gov run --record`), kept after the demo."""
    say = progress or (lambda _msg: None)
    board = load_board(board_name)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="dvfs-demo-", dir=base))
    procs: list[subprocess.Popen] = []
    daemon = None
    phone = None
    stack = ExitStack()  # the FUSE mount, unmounted after the daemon has restored and stopped
    try:
        sock = work / "gov.sock"
        vroot = work / "board"
        VirtualBoard(vroot, board)
        backend_cfg = {"kind": "virtual", "virtual_root": str(vroot), "state_file": str(work / "saved.json")}
        sysfs = "in-process hook"
        if backend == "virtual":  # the kernel mounted as a file system: the daemon sees a real /sys
            try:
                mount = stack.enter_context(mounted(vroot, work / "sys"))
                backend_cfg = {"kind": "linux", "sysfs_root": str(mount), "state_file": str(work / "saved.json")}
                sysfs = f"FUSE mount at {mount}"
            except FuseUnavailable as exc:
                say(f"{exc}; the daemon uses the in-process hook instead")
        if backend == "android":  # the same board, but driven over ADB through a virtual phone
            phone = VirtualAdbDevice(vroot).__enter__()
            backend_cfg = {"kind": "android", "state_file": str(work / "saved.json"),
                           "adb": {"address": phone.address, "key_path": str(work / "adbkey")}}
            say(f"virtual phone serving ADB on {phone.address}")
        models = {a["model"]: {"simulate": a["model"]} for a in APPS}
        if backend_cfg["kind"] != "virtual":  # `simulate` needs the virtual backend: fit here, pass the files
            from governor.app import fit_on_virtual_board

            for name in models:
                (work / f"{name}.est.json").write_text(fit_on_virtual_board(board, name).to_json())
                models[name] = {"estimator": str(work / f"{name}.est.json")}
        cfg = {
            "board": board_name,
            "backend": backend_cfg,
            "socket": str(sock),
            "models": models,
            "log_level": "warning",
        }
        (work / "governor.yaml").write_text(yaml.safe_dump(cfg))
        say(f"virtual board {board_name} at {vroot} ({sysfs}); starting the governor daemon "
            "(profiling and fitting the models on the virtual board)")
        record_args = ["--record", str(Path(record).resolve())] if record else []
        daemon = subprocess.Popen([sys.executable, "-m", "governor.cli", "run", "--config",
                                   str(work / "governor.yaml"), *record_args], stderr=subprocess.PIPE, text=True)
        wait_for_daemon(sock, daemon)
        for i, a in enumerate(APPS):
            cmd = [sys.executable, "-m", "governor.demo_app", "--socket", str(sock),
                   "--virtual-root", str(vroot), "--app", a["app"], "--model", a["model"],
                   "--deadline-ms", str(a["deadline_ms"]), "--fps", str(a["fps"]),
                   "--duration", str(duration_s), "--seed", str(i + 1),
                   "--trace", str(work / f"{a['app']}.jsonl")]
            if a["context_start"] is not None:
                cmd += ["--context-start", str(a["context_start"])]
            procs.append(subprocess.Popen(cmd, stderr=subprocess.DEVNULL))
        say(f"apps running for {duration_s:.0f} s, sharing the GPU: camera (yolo_tiny, 30 fps, 33 ms per frame) "
            "and assistant (smollm_135m, 20 tokens/s, 30 ms per token)")
        kernel = VirtualBoard(vroot).kernel
        status_client = GovernorClient(str(sock))
        t0 = time.monotonic()
        phase = "normal"
        while any(p.poll() is None for p in procs):
            frac = (time.monotonic() - t0) / duration_s
            load = LOAD_PHASE[0] <= frac < LOAD_PHASE[1]
            cap = THERMAL_PHASE[0] <= frac < THERMAL_PHASE[1]
            kernel.set_background_load(BACKGROUND_LOAD if load else 0.0)
            kernel.force_thermal_cap(True if cap else None)
            phase = "+".join(p for p, on in (("background load", load), ("thermal cap", cap)) if on) or "normal"
            st = status_client.status()
            apps = ", ".join(f"{k} {v['frames']} frames/{v['misses']} late" for k, v in st["apps"].items())
            gpu = f"gpu {st['gpu_hz'] // 1_000_000} MHz" if st["gpu_hz"] is not None else "no gpu"
            say(f"[{time.monotonic() - t0:5.1f}s] {phase:28s} cpu {st['cpu_khz']} kHz, {gpu} | {apps}")
            time.sleep(1.0)
        measured = status_client.status()  # the rails' totals, before the daemon stops
        status_client.close()
        kernel.force_thermal_cap(None)
        kernel.set_background_load(0.0)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        restored = not (work / "saved.json").exists()
        say("governor stopped, original settings restored" if restored else "restore FAILED")
        say("replaying the workload under performance, ondemand, the oracle and the oracle at the miss target")
        out = {"board": board_name, "backend": backend, "sysfs": sysfs, "duration_s": duration_s,
               "restored": restored, "apps": []}
        target = GovernorSettings().miss_rate_target  # the daemon runs with the default settings
        traces = [[FrameTrace.model_validate_json(line)
                   for line in (work / f"{a['app']}.jsonl").read_text().splitlines()] for a in APPS]
        sims = [Simulator(board, load_model_spec(a["model"])) for a in APPS]
        # the apps share the GPU and one point at a time serves both apps' frames in flight: the
        # references run the same frames that way too
        refs = shared_baselines(board, list(zip(sims, traces, strict=True)), target)
        for a, frames, ref in zip(APPS, traces, refs, strict=True):
            out["apps"].append({
                "app": a["app"], "model": a["model"], "deadline_ms": a["deadline_ms"],
                "frames": len(frames),
                "misses": sum(f.latency_ms > f.deadline_ms for f in frames),
                "energy_j": round(sum(f.energy_j for f in frames), 4),
                "baselines": ref,
            })
        out["measured"] = measured_vs_modelled(measured, out["apps"])
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        if phone is not None:
            phone.close()
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


def measured_vs_modelled(status: dict, apps: list[dict]) -> dict | None:
    """The board rail's energy per frame over the run (all apps share the board, so one figure),
    beside the energy model's for the same frames; None where the board has no power rail."""
    if not status.get("power_rail") or not status.get("measured_frames"):
        return None
    modelled_j = sum(a["energy_j"] for a in apps)
    frames = sum(a["frames"] for a in apps)
    return {"rail": status["power_rail"],
            "energy_per_frame_mj": round(status["measured_energy_j"] / status["measured_frames"] * 1e3, 3),
            "modelled_energy_per_frame_mj": round(modelled_j / max(frames, 1) * 1e3, 3),
            "frames_measured": status["measured_frames"], "frames": frames}


def format_table(result: dict) -> str:
    """Per app: the governed run and each reference; energy against ``performance`` and against the
    oracle at the miss target (one point at a time for both apps' frames in flight, knowing
    everything but the noise: the best a governor with that target can do here).
    ``oracle_target_per_frame`` gives each frame its own point, which overlapping frames cannot have;
    ``oracle_target_causal`` plans each frame with what its app's previous frame ran under (it does
    not see a load step coming: what a governor learning from measured frames can reach at best)."""
    lines = [f"{'app':10s} {'policy':23s} {'frames':>7s} {'late':>6s} {'miss %':>7s} {'energy J':>9s} "
             f"{'vs perf':>8s} {'x target':>9s}"]
    for a in result["apps"]:
        perf = a["baselines"]["performance"]["energy_j"]
        target = a["baselines"].get("oracle_target", {}).get("energy_j")
        rows = [("governor", a["frames"], a["misses"], a["energy_j"])]
        rows += [(k, v["frames"], v["misses"], v["energy_j"]) for k, v in a["baselines"].items()]
        for name, frames, misses, energy in rows:
            vs_target = f"{energy / target:8.3f}x" if target else f"{'-':>9s}"
            lines.append(f"{a['app']:10s} {name:23s} {frames:7d} {misses:6d} "
                         f"{100 * misses / max(frames, 1):6.2f}% {energy:9.3f} "
                         f"{100 * (energy / perf - 1):+7.1f}% {vs_target}")
    m = result.get("measured")
    if m:
        lines.append(f"measured on the {m['rail']} rail: {m['energy_per_frame_mj']} mJ per frame over "
                     f"{m['frames_measured']} frames; energy model: {m['modelled_energy_per_frame_mj']} mJ")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(format_table(run_demo(progress=print)))
