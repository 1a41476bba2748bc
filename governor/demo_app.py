"""A simulated app for the demo: asks the governor before each frame, runs the frame on the
virtual board over time (behind other apps' GPU work, at the frequencies in force from moment to
moment: ``running_frame``), reports the measured latency, and writes its frame trace as JSON lines.

    python -m governor.demo_app --socket S --virtual-root R --app camera --model yolo_tiny \
        --deadline-ms 33.3 --fps 30 --duration 20 --trace camera.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from dvfs_schema.loading import load_model_spec
from governor.baselines import FrameTrace
from governor.client import GovernorClient
from sysfs_backends.virtual.board import VirtualBoard
from sysfs_backends.virtual.running_frame import run_frame_over_time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--virtual-root", required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--deadline-ms", type=float, required=True)
    ap.add_argument("--fps", type=float, default=0.0, help="0: back to back (token decoding)")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--context-start", type=int)
    ap.add_argument("--context-max", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", required=True)
    args = ap.parse_args(argv)

    vb = VirtualBoard(args.virtual_root)
    sim = vb.simulator(load_model_spec(args.model))
    period_s = 1.0 / args.fps if args.fps else 0.0
    ctx = args.context_start
    client = GovernorClient(args.socket, app=args.app)
    t0 = time.monotonic()
    next_start = t0
    n = 0
    with open(args.trace, "w") as out:
        while time.monotonic() - t0 < args.duration:
            seed = args.seed * 1_000_003 + n
            decision = client.before_frame(args.model, args.deadline_ms, ctx)
            # the frame runs over time: behind other apps' GPU work, at whatever point is in force
            # from moment to moment (occupying the app for its whole latency, as on a board)
            frame = run_frame_over_time(vb.kernel, sim, ctx, np.random.default_rng(seed), period_s=period_s or None)
            latency_ms = frame.latency_ns / 1e6
            client.after_frame(decision["frame"], latency_ms)
            trace = FrameTrace(
                t_s=round(time.monotonic() - t0, 4), deadline_ms=args.deadline_ms,
                period_ms=period_s * 1e3 if period_s else latency_ms, context_len=ctx,
                background_load=frame.background_load, capped=frame.capped, seed=seed,
                cpu_khz=frame.cpu_khz, gpu_hz=frame.gpu_hz, mem_hz=frame.mem_hz, latency_ms=round(latency_ms, 4),
                energy_j=frame.energy_j, start_ns=frame.start_ns, wait_ms=round(frame.wait_ns / 1e6, 4),
                noise=frame.noise,
            )
            out.write(trace.model_dump_json() + "\n")
            n += 1
            if ctx is not None:
                ctx = args.context_start if ctx >= args.context_max else ctx + 1
            if period_s:
                next_start += period_s
                time.sleep(max(0.0, next_start - time.monotonic()))
    client.close()
    print(json.dumps({"app": args.app, "frames": n}), file=sys.stderr)


if __name__ == "__main__":
    main()
