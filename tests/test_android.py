"""The Android backend over real TCP ADB (adb-shell) to a device that speaks the ADB protocol."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from governor.app import fit_on_virtual_board
from governor.configs import load_board
from governor.core import Governor
from sysfs_backends.android import AndroidBackend
from sysfs_backends.base import BackendUnavailable
from sysfs_backends.registry import AdbOptions
from sysfs_backends.transport import SysfsIOError
from sysfs_backends.virtual.adb_device import VirtualAdbDevice
from sysfs_backends.virtual.board import VirtualBoard

BOARD = "sd888_phone"
POLICY = "sys/devices/system/cpu/cpufreq/policy7"
GPU = "sys/class/devfreq/3d00000.qcom,kgsl-3d0"


@pytest.fixture
def phone(tmp_path):
    vb = VirtualBoard(tmp_path / "tree", load_board(BOARD))
    with VirtualAdbDevice(vb.root) as dev:
        yield vb, dev


def connect(dev, tmp_path, timeout: float = 5.0) -> AndroidBackend:
    opts = AdbOptions(address=dev.address, key_path=str(tmp_path / "keys" / "adbkey"),
                      connect_timeout_s=timeout, command_timeout_s=timeout)
    return AndroidBackend(load_board(BOARD), opts, tmp_path / "saved.json")


def read(vb, rel: str) -> str:
    return (vb.root / rel).read_text().strip()


def test_key_created_on_first_use_and_auth_by_signature_next_time(phone, tmp_path):
    vb, dev = phone
    be = connect(dev, tmp_path)
    assert (tmp_path / "keys" / "adbkey").exists() and (tmp_path / "keys" / "adbkey.pub").exists()
    assert len(dev.accepted_keys) == 1  # first time: the public key, "allowed" on the phone
    be.close()
    be = connect(dev, tmp_path)  # second time: the token signature is verified
    assert len(dev.accepted_keys) == 1 and dev.connections == 2
    be.close()


def test_discovery_and_apply_in_one_round_trip(phone, tmp_path):
    vb, dev = phone
    be = connect(dev, tmp_path)
    found = be.discover()
    assert found.backend == "android"
    assert found.domains["gpu"].kind == "kgsl" and found.states["cpu"].governor == "schedutil"
    res = be.apply(1_305_600, 443_000_000)
    # writes and read-back travel together; a second trip only while cpufreq's asynchronous limit
    # update has not shown yet (the read-back must show the kernel's settled state)
    assert res.round_trips <= 2 and res.writes == 4
    assert res.effective == {"cpu": 1_305_600, "gpu": 443_000_000} and res.conditions["cpu"] == "ok"
    assert res.effective == {"cpu": 1_305_600, "gpu": 443_000_000}
    assert read(vb, f"{POLICY}/scaling_cur_freq") == "1305600"  # the kernel applied it
    assert read(vb, "sys/class/kgsl/kgsl-3d0/gpuclk") == "443000000"
    res = be.apply(1_305_600, 443_000_000)
    assert res.writes == 0 and res.round_trips == 1
    # going up: max must be written before min, or the kernel would refuse
    res = be.apply(2_841_600, 840_000_000)
    assert res.effective == {"cpu": 2_841_600, "gpu": 840_000_000}
    be.restore()
    assert read(vb, f"{POLICY}/scaling_min_freq") == "844800"
    assert read(vb, f"{GPU}/max_freq") == "840000000"
    be.close()


def test_not_root_uses_su(phone, tmp_path):
    vb, dev = phone
    dev.root = False
    be = connect(dev, tmp_path)
    be.apply(1_305_600, 443_000_000)
    writing = [c for c in dev.commands if "scaling_max_freq\n" in c and "\nw " in c]
    assert writing and all(c.startswith("su -c ") for c in writing)
    assert read(vb, f"{POLICY}/scaling_max_freq") == "1305600"
    be.close()


@pytest.mark.parametrize("mode,message", [("deny", "su refused"), ("missing", "su is missing")])
def test_su_denied_or_missing_is_explained(phone, tmp_path, mode, message):
    vb, dev = phone
    dev.root, dev.su = False, mode
    be = connect(dev, tmp_path)
    with pytest.raises(PermissionError, match=message):
        be.apply(1_305_600, 443_000_000)
    assert read(vb, f"{POLICY}/scaling_max_freq") == "2841600"
    be.close()


def test_write_refused_names_file_and_keeps_previous_settings(phone, tmp_path):
    vb, dev = phone
    be = connect(dev, tmp_path)
    be.apply(1_305_600, 443_000_000)
    gmax = f"/{GPU}/max_freq"
    dev.eacces.add(gmax)  # SELinux or a read-only attribute
    with pytest.raises(SysfsIOError) as info:
        be.apply(2_035_200, 676_000_000)
    assert info.value.errno == errno.EACCES
    assert gmax in str(info.value) and "676000000" in str(info.value)
    assert "SELinux is Enforcing" in str(info.value)
    # the CPU limits written earlier in the same batch were put back
    assert read(vb, f"{POLICY}/scaling_min_freq") == read(vb, f"{POLICY}/scaling_max_freq") == "1305600"
    assert read(vb, f"{GPU}/min_freq") == "443000000"
    dev.eacces.clear()
    assert be.apply(2_035_200, 676_000_000).effective == {"cpu": 2_035_200, "gpu": 676_000_000}
    be.close()


def test_stall_times_out_then_reconnects(phone, tmp_path):
    vb, dev = phone
    be = connect(dev, tmp_path, timeout=1.0)
    be.discover()
    dev.stall_s = 3.0
    with pytest.raises(BackendUnavailable):
        be.apply(1_305_600, 443_000_000)
    assert not be.connected
    dev.stall_s = 0.0
    for _ in range(100):
        if be.connected:
            break
        time.sleep(0.1)
    assert be.connected
    assert be.apply(1_305_600, 443_000_000).effective["cpu"] == 1_305_600
    be.close()


def test_dropped_connection_governor_keeps_serving_and_recovers(phone, tmp_path):
    vb, dev = phone
    board = load_board(BOARD)
    gov = Governor(connect(dev, tmp_path), board, {"yolo": fit_on_virtual_board(board, "yolo_tiny")})
    gov.start()
    d = gov.before_frame("yolo", 25.0)
    gov.after_frame(d.frame, 20.0)
    dev.drop_next = True  # the cable is pulled in the middle of the next command
    d = gov.before_frame("yolo", 12.0)  # wants a change: the write is lost with the connection
    assert any("not applied" in n for n in d.notes)
    gov.after_frame(d.frame, 11.0)
    assert gov.status()["backend_connected"] is False
    d = gov.before_frame("yolo", 12.0)  # still answered while the phone is away
    gov.after_frame(d.frame, 11.0)
    for _ in range(100):
        if gov.backend.connected:
            break
        time.sleep(0.1)
    d = gov.before_frame("yolo", 12.0)
    assert not d.notes and gov.status()["backend_connected"] is True
    assert read(vb, f"{POLICY}/scaling_cur_freq") == str(d.cpu_khz)
    gov.stop()
    assert read(vb, f"{POLICY}/scaling_min_freq") == "844800"


def test_stopped_while_phone_away_restored_when_back(phone, tmp_path):
    vb, dev = phone
    be = connect(dev, tmp_path)
    board = load_board(BOARD)
    gov = Governor(be, board, {"yolo": fit_on_virtual_board(board, "yolo_tiny")})
    gov.start()
    gov.before_frame("yolo", 25.0)
    assert read(vb, f"{POLICY}/scaling_max_freq") != "2841600"
    dev.restart_adbd()
    dev.stall_s = 30.0  # and it does not come back before the governor stops
    time.sleep(0.2)
    gov.stop()  # cannot restore now: the state file is kept
    assert (tmp_path / "saved.json").exists()
    be.close()
    dev.stall_s = 0.0
    again = connect(dev, tmp_path)  # the phone is back: the next start puts the originals back
    assert again.recover_crashed()
    assert read(vb, f"{POLICY}/scaling_max_freq") == "2841600"
    assert not (tmp_path / "saved.json").exists()
    again.close()


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is not installed")
def test_stock_adb_client_talks_to_the_test_device(phone, tmp_path):
    vb, dev = phone
    env = {**os.environ, "HOME": str(tmp_path), "ANDROID_ADB_SERVER_PORT": str(15037 + os.getpid() % 1000)}

    def adb(*args):
        return subprocess.run(["adb", *args], capture_output=True, text=True, timeout=60, env=env)

    try:
        out = adb("connect", dev.address)
        # a new key goes through RSAPUBLICKEY: like a real phone, adb first says "failed to
        # authenticate" and the device comes online once it is accepted
        assert "connected to" in out.stdout or "failed to authenticate" in out.stdout, out.stdout + out.stderr
        for _ in range(50):  # the server finishes the handshake (AUTH, then CNXN) on its own
            devices = adb("devices").stdout
            if f"{dev.address}\tdevice" in devices:
                break
            time.sleep(0.2)
        assert f"{dev.address}\tdevice" in devices, devices
        out = adb("-s", dev.address, "shell", f"cat /{POLICY}/scaling_available_governors")
        assert out.stdout.strip() == "schedutil performance powersave", out.stdout + out.stderr
        out = adb("-s", dev.address, "shell", "id -u")
        assert out.stdout.strip() == "0"
        assert len(dev.accepted_keys) == 1  # the adb server's own key, accepted on first use
    finally:
        adb("kill-server")


def test_demo_runs_unchanged_over_adb():
    out = subprocess.run([sys.executable, "-m", "governor.cli", "demo", "--backend", "android",
                          "--duration", "4", "--json"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["backend"] == "android" and result["restored"] is True
    assert all(a["frames"] > 10 for a in result["apps"])
    assert "virtual phone serving ADB" in out.stderr
