"""`dvfs-gov top`: a real daemon subprocess on a virtual board, a real app making frames, the viewer
as users run it (piped, --json, and in a pseudo-terminal)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from governor.client import GovernorClient
from governor.top import AppRates, plain_line, snapshot

CLI = [sys.executable, "-m", "governor"]


def _start_daemon(tmp: Path) -> subprocess.Popen:
    cfg = {"board": "sd888_phone", "socket": str(tmp / "gov.sock"), "log_level": "warning",
           "backend": {"kind": "virtual", "virtual_root": str(tmp / "vb"), "state_file": str(tmp / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}}}
    (tmp / "gov.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([*CLI, "run", "--config", str(tmp / "gov.yaml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            GovernorClient(str(tmp / "gov.sock")).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not start")


@pytest.fixture
def busy_daemon(tmp_path):
    """A daemon with one app ('cam') asking for frames every ~10 ms until the test ends."""
    proc = _start_daemon(tmp_path)
    stop = threading.Event()

    def app() -> None:
        with GovernorClient(str(tmp_path / "gov.sock"), app="cam") as gov:
            while not stop.is_set():
                with gov.frame("yolo", deadline_ms=40.0, app="cam"):
                    time.sleep(0.01)

    worker = threading.Thread(target=app, daemon=True)
    worker.start()
    time.sleep(0.5)
    yield tmp_path / "gov.sock"
    stop.set()
    worker.join(timeout=10)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_piped_top_prints_one_plain_line_per_refresh(busy_daemon):
    out = subprocess.run([*CLI, "top", "--socket", str(busy_daemon), "--count", "3", "--interval", "0.5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    assert not any("\x1b" in line for line in lines)  # no escapes into a pipe
    for line in lines:
        assert "cpu " in line and "MHz" in line and "gpu " in line and "| cam fps " in line
    assert "cam fps - " in lines[0]  # no rate before a second sample
    assert int(lines[-1].split(" writes ")[1].split()[0]) >= 1  # the points the governor wrote
    fps = float(lines[-1].split("cam fps ")[1].split()[0])
    assert 10 < fps < 150  # one frame every ~10 ms plus the round trips


def test_top_json_one_object_per_refresh(busy_daemon):
    out = subprocess.run([*CLI, "top", "--socket", str(busy_daemon), "--count", "2", "--interval", "0.5", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    snaps = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(snaps) == 2
    last = snaps[-1]
    assert set(last["domains"]) == {"cpu", "gpu", "mem"} and last["domains"]["cpu"]["khz"] > 0  # sd888: memory too
    cam = last["apps"]["cam"]
    assert cam["fps"] > 0 and cam["frames"] > snaps[0]["apps"]["cam"]["frames"]
    assert {"misses", "infeasible", "failed", "corrections"} <= set(cam) and "yolo" in cam["corrections"]
    assert "yolo" in last["models"]
    assert isinstance(last["writes"], int) and last["writes"] >= snaps[0]["writes"] >= 1
    # the virtual phone's battery is measured; this app runs no frame on the board, so nothing is drawn
    assert last["power_rail"] == "battery" and last["power_mw"] == 0.0


def test_top_in_a_terminal_redraws_in_place(busy_daemon):
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, "top", "--socket", str(busy_daemon), "--count", "2", "--interval", "0.3"],
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    data = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0
    text = data.decode()
    assert text.count("\x1b[H\x1b[2J") == 2  # cleared and homed once per refresh
    assert "APP" in text and "cam" in text and "frequencies: cpu" in text and "points written: " in text


def test_status_watch_follows_until_interrupted(busy_daemon):
    proc = subprocess.Popen([*CLI, "status", "--socket", str(busy_daemon), "--watch"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert "cam fps" in first
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_top_without_a_daemon_is_one_line(tmp_path):
    out = subprocess.run([*CLI, "top", "--socket", str(tmp_path / "none.sock"), "--count", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: no governor answers on") and "Traceback" not in out.stderr


def test_fps_from_count_deltas_and_power_only_when_present():
    rates = AppRates()
    assert rates.update(10.0, {"a": {"frames": 5}}) == {"a": None}
    assert rates.update(12.0, {"a": {"frames": 65}, "b": {"frames": 4}}) == {"a": 30.0, "b": 2.0}
    status = {"cpu_khz": 1000000, "gpu_hz": None, "apps": {}, "models": {}}
    assert "power" not in plain_line(snapshot(status, {}))
    assert "power 850 mW" in plain_line(snapshot({**status, "power_mw": 850}, {}))


def test_status_and_top_show_the_memory_level(busy_daemon):
    """sd888_phone has a memory domain (a bus-bandwidth vote in MB/s): the daemon's level in force
    is in status and in top, in its unit."""
    from dvfs_schema.loading import load_board

    with GovernorClient(str(busy_daemon)) as client:
        st = client.status()
    assert st["mem_unit"] == "MB/s" and st["mem_hz"] in load_board("sd888_phone").memory.frequencies_hz
    out = subprocess.run([*CLI, "status", "--socket", str(busy_daemon)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r", mem \d+ MB/s", out.stdout.splitlines()[0])
    out = subprocess.run([*CLI, "top", "--socket", str(busy_daemon), "--count", "1"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"gpu \d+ MHz, mem \d+ MB/s", out.stdout)
    # a clock (unit Hz) in MHz; nothing about memory on a board without it
    status = {"cpu_khz": 1000000, "gpu_hz": 500000000, "apps": {}, "models": {}}
    assert "mem 2112 MHz" in plain_line(snapshot({**status, "mem_hz": 2112000000, "mem_unit": "Hz"}, {}))
    assert "mem" not in plain_line(snapshot(status, {}))
