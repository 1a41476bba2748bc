"""Online power learning on the virtual phone: learned scales and measured energy per frame, on vs off.

The virtual sd888 phone's battery follows power tables other than its config's
(``simulation.true_power_scale``, default CPU x0.6 and GPU x1.8): the config is wrong the way vendor
tables are. In process, the governor runs yolo_tiny frames with the deadline changing every 40
frames (14, 17, 20, 25 ms) and samples the battery's coulomb counter every 16 frames; once with
``power_learning: false`` (the config's tables), once with it on. Reported: the scales learned, the
fit's error, the points chosen per deadline over the second half, and the energy per frame the
battery measured over the second half (the first half is where learning happens).

``python benchmarks/power_learning.py [--frames N] [--cpu 0.6] [--gpu 1.8]``; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from dvfs_schema.loading import load_board, load_model_spec
from governor.app import fit_on_virtual_board
from governor.config import GovernorSettings
from governor.core import Governor
from sysfs_backends.virtual.board import VirtualBoard

DEADLINES_MS = (14.0, 17.0, 20.0, 25.0)


def run(cfg, est, learn: bool, frames: int, tmp: Path) -> dict:
    vb = VirtualBoard(tmp / f"board-{learn}", cfg)
    gov = Governor(vb.backend(tmp / f"saved-{learn}.json"), cfg, {"yolo_tiny": est},
                   GovernorSettings(power_learning=learn, state_refresh_s=3600))
    sim = vb.simulator(load_model_spec("yolo_tiny"))
    rng = np.random.default_rng(1)
    chosen: Counter = Counter()
    misses = 0
    with gov:
        for i in range(frames):
            if i % 16 == 0:  # the rail sampled every 16 frames: the same run on any machine
                gov.refresh()
            if i == frames // 2:
                half = gov.status()
            deadline = DEADLINES_MS[(i // 40) % len(DEADLINES_MS)]
            d = gov.before_frame("yolo_tiny", deadline)
            f = vb.kernel.run_frame(sim, None, rng)
            gov.after_frame(d.frame, f.latency_ns / 1e6)
            if i >= frames // 2:
                chosen[f"{deadline:g} ms: cpu {d.cpu_khz // 1000} MHz, gpu {d.gpu_hz // 10**6} MHz, "
                       f"mem {d.mem_hz} MB/s"] += 1
                misses += f.latency_ns / 1e6 > deadline
        gov._next_refresh = 0
        gov.refresh()
        st = gov.status()
    per_frame = ((st["measured_energy_j"] - half["measured_energy_j"])
                 / (st["measured_frames"] - half["measured_frames"]) * 1e3)
    return {"measured_energy_per_frame_mj": round(per_frame, 3), "misses_second_half": int(misses),
            "power_learning": st["power_learning"], "points_second_half": dict(sorted(chosen.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=800)
    ap.add_argument("--cpu", type=float, default=0.6, help="true CPU power / the config's")
    ap.add_argument("--gpu", type=float, default=1.8, help="true GPU power / the config's")
    args = ap.parse_args()
    cfg = load_board("sd888_phone").model_copy(deep=True)
    cfg.simulation.true_power_scale = {"cpu": args.cpu, "gpu": args.gpu}
    est = fit_on_virtual_board(cfg, "yolo_tiny")
    with tempfile.TemporaryDirectory(prefix="dvfs-powerlearn-") as tmp:
        off = run(cfg, est, False, args.frames, Path(tmp))
        on = run(cfg, est, True, args.frames, Path(tmp))
    out = {"board": "sd888_phone", "true_power_scale": cfg.simulation.true_power_scale, "frames": args.frames,
           "learning_off": off, "learning_on": on,
           "energy_change": round(on["measured_energy_per_frame_mj"] / off["measured_energy_per_frame_mj"] - 1, 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
