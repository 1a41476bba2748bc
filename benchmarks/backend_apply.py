"""Cost of one apply (both domains) through the backends.

* ``linux_plain``: the Linux backend on a plain /sys-shaped tree (file I/O only, closest to what a
  real board's sysfs costs the governor);
* ``virtual``: the same backend on the virtual board, where every write also runs the virtual
  kernel (lock, rules, state file);
* ``android``: the Android backend over ADB on loopback to the virtual phone
  (sysfs_backends/virtual/adb_device.py). Its time is mostly the virtual phone's: its shell
  interpreter and the virtual kernel applying the writes.

For each: median and p99 in microseconds, with a frequency change every call and with no change,
plus writes, file operations and round trips per apply. Prints JSON.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from dvfs_schema.loading import load_board
from sysfs_backends.android import AndroidBackend
from sysfs_backends.base import Backend
from sysfs_backends.linux import LinuxBackend
from sysfs_backends.registry import AdbOptions
from sysfs_backends.virtual.adb_device import VirtualAdbDevice
from sysfs_backends.virtual.board import VirtualBoard, build_tree

N = 400


def measure(backend: Backend, pairs: list[tuple[int, int]], n: int = N) -> dict:
    out = {}
    for label, seq in (("changing", pairs), ("unchanged", [pairs[0]])):
        backend.apply(dict(zip(("cpu", "gpu"), pairs[-1], strict=True)))  # start from a different pair, then warm
        backend.apply({"cpu": seq[0][0], "gpu": seq[0][1]}) if label == "unchanged" else None
        samples, writes, trips = [], [], []
        transport = backend.transport
        ops_before = transport.round_trips
        for i in range(n):
            c, g = seq[i % len(seq)]
            t0 = time.perf_counter()
            res = backend.apply({"cpu": c, "gpu": g})
            samples.append(time.perf_counter() - t0)
            writes.append(res.writes)
            trips.append(res.round_trips)
        us = np.array(samples) * 1e6
        out[label] = {
            "median_us": round(float(np.median(us)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "writes_per_apply": float(np.mean(writes)),
            "round_trips_per_apply": float(np.mean(trips)),
            "transport_calls": transport.round_trips - ops_before,
        }
    return out


def main() -> None:
    board = load_board("sd888_phone")  # min == max pinning: 2 writes per changed domain
    cpus, gpus = board.cpu.inference.frequencies_khz, board.gpu.frequencies_hz
    pairs = [(cpus[i % len(cpus)], gpus[(3 * i) % len(gpus)]) for i in range(1, 40)]
    result = {"benchmark": "backend_apply", "board": board.name, "applies": N}
    # sysfs lives in memory: build the trees on tmpfs where there is one, so the figures measure
    # the backend rather than a disk's truncate-on-open
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as d:
        build_tree(Path(d) / "plain", board)
        result["linux_plain"] = measure(LinuxBackend(board, Path(d) / "plain", Path(d) / "s1.json"), pairs)
        vb = VirtualBoard(Path(d) / "virt", board)
        result["virtual"] = measure(vb.backend(Path(d) / "s2.json"), pairs)
        with VirtualAdbDevice(Path(d) / "virt") as dev:
            be = AndroidBackend(board, AdbOptions(address=dev.address, key_path=str(Path(d) / "key")),
                                Path(d) / "s3.json")
            result["android"] = measure(be, pairs, n=100)
            be.close()
    result["target_no_write_when_unchanged"] = all(
        result[k]["unchanged"]["writes_per_apply"] == 0 for k in result if isinstance(result.get(k), dict)
        and "unchanged" in result[k])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
