"""The daemon as users run it: `dvfs-gov run` in its own process, apps over a real Unix socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from governor.client import GovernorClient, GovernorClientError

CLI = [sys.executable, "-m", "governor.cli"]
POLICY = "sys/devices/system/cpu/cpufreq/policy7"


def write_config(tmp: Path) -> Path:
    cfg = {"board": "sd888_phone", "socket": str(tmp / "gov.sock"), "log_level": "info",
           "backend": {"kind": "virtual", "virtual_root": str(tmp / "vb"),
                       "state_file": str(tmp / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}, "llm": {"simulate": "smollm_135m"}}}
    path = tmp / "gov.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(tmp: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "run", "--config", str(write_config(tmp))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = tmp / "gov.sock"
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        if sock.exists():
            try:
                GovernorClient(str(sock)).close()  # listening, not a stale file
                return proc
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not start")


@pytest.fixture
def daemon(tmp_path):
    proc = start(tmp_path)
    yield proc, tmp_path
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def raw(sock: Path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(sock))
    return s, s.makefile("rb")


def test_protocol_round_trip_and_frequencies_written_before_reply(daemon):
    _, tmp = daemon
    with GovernorClient(str(tmp / "gov.sock"), app="camera") as c:
        d = c.before_frame("yolo", 25.0)
        assert d["ok"] and d["frame"] >= 1 and d["feasible"] is True
        # "the chosen frequencies are already written when this line is sent"
        pol = tmp / "vb" / POLICY
        assert (pol / "scaling_cur_freq").read_text().strip() == str(d["cpu_khz"])
        assert d["predicted_ms"] <= 25.0
        c.after_frame(d["frame"], 20.0)
        lm = c.before_frame("llm", 30.0, context_len=812, app="assistant")
        c.after_frame(lm["frame"], 14.0)
        st = c.status()
        assert {k: st["apps"]["camera"][k] for k in ("frames", "misses", "infeasible")} == \
            {"frames": 1, "misses": 0, "infeasible": 0}
        assert st["apps"]["assistant"]["frames"] == 1
        assert set(st["models"]) == {"yolo", "llm"} and st["protocol"] == 1
        with pytest.raises(GovernorClientError) as info:
            c.before_frame("nope", 10.0)
        assert info.value.code == "unknown_model"

def test_a_report_is_not_waited_for_and_its_reply_is_read_before_the_next(daemon):
    """``frame()`` (and ``after_frame(wait=False)``) send the report and return without a round
    trip; the reply is read, in order, before the next request's: the next reply is never taken
    for the report's, the daemon has learned the report by then, and a refused report is warned
    about (unknown_frame, a frame that expired, silently) instead of failing the next request."""
    _, tmp = daemon
    with GovernorClient(str(tmp / "gov.sock"), app="camera") as c:
        for _ in range(3):
            with c.frame("yolo", 25.0) as d:
                assert d["ok"]
        assert c.status()["in_flight"] == 0 and c.status()["apps"]["camera"]["frames"] == 3
        first = c.before_frame("yolo", 25.0)
        assert c.after_frame(first["frame"], 20.0, wait=False) is None
        assert c.after_frame(10**9, 5.0, wait=False) is None  # not in flight: silent
        second = c.before_frame("yolo", 25.0)
        assert second["ok"] and second["frame"] > first["frame"] and "cpu_khz" in second
        with pytest.warns(RuntimeWarning, match="bad_field"):
            c.after_frame(second["frame"], -1.0, wait=False)
            st = c.status()
        assert st["ok"] and "apps" in st
        c.after_frame(second["frame"], 20.0)  # refused above, so still in flight: reported now
        assert c.status()["in_flight"] == 0


def test_infeasible_is_served_at_fastest_pair(daemon):
    _, tmp = daemon
    with GovernorClient(str(tmp / "gov.sock")) as c:
        d = c.before_frame("yolo", 0.5)
        assert d["ok"] and d["feasible"] is False
        assert (d["cpu_khz"], d["gpu_hz"]) == (2_841_600, 840_000_000)


HOSTILE = [
    (b"{not json\n", "bad_json"),
    (b"[1, 2, 3]\n", "bad_json"),
    (b'"just a string"\n', "bad_json"),
    (b'{"op": "reboot"}\n', "unknown_op"),
    (b'{"deadline_ms": 30}\n', "unknown_op"),
    (b'{"op": "before_frame", "model": "resnet", "deadline_ms": 30}\n', "unknown_model"),
    (b'{"op": "before_frame", "model": "yolo", "deadline_ms": -1}\n', "bad_field"),
    (b'{"op": "before_frame", "model": "yolo", "deadline_ms": "30"}\n', "bad_field"),
    (b'{"op": "before_frame", "model": "yolo"}\n', "bad_field"),
    (b'{"op": "before_frame", "model": 7, "deadline_ms": 30}\n', "bad_field"),
    (b'{"op": "before_frame", "model": "llm", "deadline_ms": 30}\n', "bad_field"),
    (b'{"op": "before_frame", "model": "llm", "deadline_ms": 30, "context_len": -4}\n', "bad_field"),
    (b'{"op": "after_frame", "frame": 123456, "latency_ms": 3}\n', "unknown_frame"),
    (b'{"op": "after_frame", "frame": true, "latency_ms": 3}\n', "bad_field"),
    (b'\xff\xfe\xfd\n', "bad_json"),
    (b"x" * 200_000 + b"\n", "line_too_long"),
]


def test_hostile_messages_get_errors_and_daemon_stays_up(daemon):
    proc, tmp = daemon
    s, f = raw(tmp / "gov.sock")
    for line, code in HOSTILE:
        s.sendall(line)
        reply = json.loads(f.readline())
        assert reply["ok"] is False and reply["error"] == code, (line[:60], reply)
        assert reply["message"]
    # same connection still usable, extra fields ignored
    s.sendall(b'{"op": "before_frame", "model": "yolo", "deadline_ms": 30, "future_field": 1}\n')
    assert json.loads(f.readline())["ok"] is True
    # a client that vanishes mid-line does not hurt anyone
    s2, _ = raw(tmp / "gov.sock")
    s2.sendall(b'{"op": "before_fr')
    s2.close()
    s.sendall(b'{"op": "status"}\n')
    assert json.loads(f.readline())["ok"] is True
    assert proc.poll() is None
    s.close()


def test_pipelined_requests_answered_in_order(daemon):
    _, tmp = daemon
    s, f = raw(tmp / "gov.sock")
    s.sendall(b"".join(b'{"op": "before_frame", "model": "yolo", "deadline_ms": 30}\n' for _ in range(50)))
    frames = [json.loads(f.readline())["frame"] for _ in range(50)]
    assert frames == sorted(frames) and len(set(frames)) == 50
    s.close()


def test_status_command_queries_the_daemon(daemon):
    _, tmp = daemon
    with GovernorClient(str(tmp / "gov.sock"), app="camera") as c:
        d = c.before_frame("yolo", 25.0)
        c.after_frame(d["frame"], 30.0)  # late
    out = subprocess.run([*CLI, "status", "--socket", str(tmp / "gov.sock")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "app camera: 1 frames, 1 late" in out.stdout and "backend virtual (connected)" in out.stdout
    gone = subprocess.run([*CLI, "status", "--socket", str(tmp / "nope.sock")], capture_output=True, text=True,
                          timeout=60)
    assert gone.returncode == 2 and "no governor answers" in gone.stderr


def test_socket_mode_and_second_daemon_refused(daemon):
    proc, tmp = daemon
    assert stat.S_IMODE(os.stat(tmp / "gov.sock").st_mode) == 0o660
    second = subprocess.run([*CLI, "run", "--config", str(tmp / "gov.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert f"owned by a running governor (pid {proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert (tmp / "gov.sock").exists()


def test_sigterm_restores_and_removes_socket(daemon):
    proc, tmp = daemon
    c = GovernorClient(str(tmp / "gov.sock"))  # still connected: the domains stay taken
    c.before_frame("yolo", 25.0)
    pol = tmp / "vb" / POLICY
    assert (pol / "scaling_max_freq").read_text().strip() != "2841600"  # pinned
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    c.close()
    assert not (tmp / "gov.sock").exists()
    assert (pol / "scaling_min_freq").read_text().strip() == "844800"
    assert (pol / "scaling_max_freq").read_text().strip() == "2841600"
    assert not (tmp / "saved.json").exists()


def test_sigkill_then_restore_on_next_start(daemon):
    proc, tmp = daemon
    c = GovernorClient(str(tmp / "gov.sock"))
    c.before_frame("yolo", 25.0)
    proc.kill()
    c.close()
    proc.wait(timeout=30)
    pol = tmp / "vb" / POLICY
    assert (tmp / "saved.json").exists()
    assert (pol / "scaling_max_freq").read_text().strip() != "2841600"  # left pinned
    again = start(tmp)  # stale socket file and saved state from the killed run
    try:
        # the new run saved the true originals, not the killed run's pinned limits
        assert json.loads((tmp / "saved.json").read_text())["domains"]["cpu"]["max"] == 2841600
        with GovernorClient(str(tmp / "gov.sock")) as c:
            assert c.status()["ok"]
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)
    assert (pol / "scaling_max_freq").read_text().strip() == "2841600"
    assert "restored settings left by a killed run" in again.stderr.read()


def test_bad_governor_config_names_file_key_and_values(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("board: sd888_phone\nmodels: {yolo: {simulate: yolo_tiny}}\nlog_level: loud\n")
    out = subprocess.run([*CLI, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(cfg) in out.stderr and "key 'log_level'" in out.stderr
    assert "'debug', 'info', 'warning' or 'error'" in out.stderr
    cfg.write_text("board: sd888_phone\nbackend: {kind: linux}\nmodels: {yolo: {simulate: yolo_tiny}}\n")
    out = subprocess.run([*CLI, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "needs backend.kind: virtual" in out.stderr


def test_demo_json_end_to_end():
    out = subprocess.run([*CLI, "demo", "--duration", "4", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["restored"] is True
    apps = {a["app"]: a for a in result["apps"]}
    assert set(apps) == {"camera", "assistant"}
    for a in apps.values():
        assert a["frames"] > 10
        b = a["baselines"]
        assert set(b) == {"performance", "ondemand", "oracle", "oracle_target", "oracle_target_causal",
                          "oracle_target_per_frame"}
        for ref in b.values():
            assert ref["frames"] == a["frames"] and ref["energy_j"] > 0
        # the fair reference (replayed with the apps together: one GPU queue, one point at a time)
        # plans with the noise's 99% quantile: about 1% of its frames late, for less than performance
        assert b["oracle_target"]["misses"] <= 0.03 * a["frames"] + 1
        assert b["oracle_target"]["energy_j"] < b["performance"]["energy_j"]
        assert a["energy_j"] < b["performance"]["energy_j"]
    assert "background load" in out.stderr  # progress went to stderr
    from sysfs_backends.virtual.fuse_mount import fuse_unavailable

    if fuse_unavailable() is None:  # the daemon drove the board as a real one: Linux backend on the mount
        assert result["sysfs"].startswith("FUSE mount at ")
    else:
        assert result["sysfs"] == "in-process hook" and fuse_unavailable() in out.stderr


def test_the_next_context_bucket_is_computed_before_a_frame_asks_for_it(daemon):
    """A decoder's context grows a token a frame: the grid of the next bucket (16 tokens on) is
    computed in the daemon's worker while the app runs, so the first frame there does not wait."""
    _, tmp = daemon
    with GovernorClient(str(tmp / "gov.sock"), app="chat") as c:
        d = c.before_frame("llm", 80.0, context_len=100)  # bucket 112
        c.after_frame(d["frame"], 40.0)
        buckets: list[int] = []
        for _ in range(300):
            buckets = c.status()["models"]["llm"]["context_buckets"]
            if 128 in buckets:
                break
            time.sleep(0.05)
        assert buckets == [112, 128]  # asked for, and the next one: no frame asked at 113..128
        assert "context_buckets" not in c.status()["models"]["yolo"]
