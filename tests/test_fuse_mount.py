"""The virtual board's kernel mounted with FUSE: ordinary programs (cat, a shell's echo) and plain
system calls get the kernel's answers and errors, as on a real /sys."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from dvfs_schema.loading import load_board
from sysfs_backends.virtual.board import VirtualBoard
from sysfs_backends.virtual.fuse_mount import FuseUnavailable, fuse_unavailable, is_mounted, mounted

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=fuse_unavailable() or "")

POL = "sys/devices/system/cpu/cpufreq/policy4"
GPU = "sys/class/devfreq/fb000000.gpu"


@pytest.fixture
def rk(tmp_path):
    cfg = load_board("rk3588").model_copy(deep=True)
    cfg.simulation.limit_apply_delay_ns = 0
    vb = VirtualBoard(tmp_path / "b", cfg)
    log = tmp_path / "stores.jsonl"
    with mounted(vb.root, tmp_path / "mnt", store_log=log) as mp:
        yield vb, mp, log


def sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=30)


def test_cat_and_echo_get_the_kernels_answers(rk):
    vb, mp, _ = rk
    cat = subprocess.run(["/bin/cat", f"{mp}/{POL}/scaling_available_frequencies"], capture_output=True, text=True)
    assert cat.returncode == 0 and cat.stdout.split()[0] == "408000"
    assert sh(f"echo userspace > {mp}/{POL}/scaling_governor").returncode == 0
    assert sh(f"echo 1000000 > {mp}/{POL}/scaling_setspeed").returncode == 0
    # the kernel resolved the request up to an OPP: what cat shows is the kernel's, not the bytes written
    assert subprocess.run(["/bin/cat", f"{mp}/{POL}/scaling_setspeed"], capture_output=True,
                          text=True).stdout == "1008000\n"
    assert vb.kernel.read(f"/{POL}/cpuinfo_cur_freq").strip() == "1008000"
    # the devfreq userspace directory appears with the governor, as in the kernel
    assert not os.path.exists(f"{mp}/{GPU}/userspace")
    assert sh(f"echo userspace > {mp}/{GPU}/governor").returncode == 0
    # devfreq's userspace governor holds no request until one is written
    assert sh(f"cat {mp}/{GPU}/userspace/set_freq").stdout.strip() == "undefined"


def test_kernel_errors_pass_through(rk):
    vb, mp, _ = rk
    bad = sh(f"echo fast > {mp}/{POL}/scaling_governor")
    assert bad.returncode != 0
    assert vb.kernel.read(f"/{POL}/scaling_governor").strip() == "schedutil"
    with pytest.raises(OSError) as info:  # the errno itself, through a plain write(2)
        fd = os.open(f"{mp}/{POL}/scaling_governor", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"fast")
        finally:
            os.close(fd)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:  # setspeed outside userspace
        fd = os.open(f"{mp}/{POL}/scaling_setspeed", os.O_WRONLY)
        try:
            os.write(fd, b"1416000")
        finally:
            os.close(fd)
    assert info.value.errno == errno.EINVAL
    # read-only attributes refuse the open itself, even to root (no store in the kernel)
    with pytest.raises(PermissionError):
        os.open(f"{mp}/{POL}/scaling_cur_freq", os.O_WRONLY)
    if shutil.which("bash"):
        denied = subprocess.run(["bash", "-c", f"echo 1 > {mp}/{POL}/scaling_cur_freq"], capture_output=True,
                                text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    vb.kernel.inject_fault(f"/{POL}/scaling_max_freq", errno.EBUSY)
    with pytest.raises(OSError) as info:
        fd = os.open(f"{mp}/{POL}/scaling_max_freq", os.O_WRONLY)
        try:
            os.write(fd, b"1416000")
        finally:
            os.close(fd)
    assert info.value.errno == errno.EBUSY
    with open(f"{mp}/{POL}/scaling_max_freq") as f:  # injected faults are for stores: reads answer
        assert f.read().strip() == "2400000"


def test_tree_shape_modes_links_and_hidden_state(rk):
    vb, mp, _ = rk
    assert os.listdir(mp) == ["sys"]  # no .virtual
    with pytest.raises(FileNotFoundError):
        open(f"{mp}/.virtual/state.json").close()
    for name in ("scaling_governor", "scaling_cur_freq", "cpuinfo_cur_freq"):
        assert stat.S_IMODE(os.stat(f"{mp}/{POL}/{name}").st_mode) == stat.S_IMODE(
            os.stat(vb.root / POL / name).st_mode)
    assert stat.S_IMODE(os.stat(f"{mp}/{POL}/cpuinfo_cur_freq").st_mode) == 0o400
    link = f"{mp}/sys/devices/system/cpu/cpu4/cpufreq"
    assert os.path.islink(link) and os.readlink(link) == "../cpufreq/policy4"
    assert open(f"{link}/scaling_driver").read() == "virtual-cpufreq\n"
    assert not any(n.startswith(".") for n in os.listdir(f"{mp}/{POL}"))
    with pytest.raises(PermissionError):
        open(f"{mp}/{POL}/new_attr", "w").close()
    with pytest.raises(PermissionError):
        os.unlink(f"{mp}/{POL}/scaling_governor")


def test_one_store_per_write_and_the_cap_in_force_is_logged(rk):
    vb, mp, log = rk
    fd = os.open(f"{mp}/{POL}/scaling_max_freq", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"1416000\n")
        os.write(fd, b"1800000\n")  # a second write(2) on the same open file is a second store
    finally:
        os.close(fd)
    assert vb.kernel.read(f"/{POL}/scaling_max_freq").strip() == "1800000"
    vb.kernel.force_thermal_cap(True)
    sh(f"echo 2400000 > {mp}/{POL}/scaling_max_freq; echo 408000 > {mp}/{POL}/scaling_min_freq")
    stores = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s["value"] for s in stores] == ["1416000", "1800000", "2400000", "408000"]
    cap = vb.board.simulation.thermal_cap_cpu_khz
    assert [s["cap"] for s in stores] == [None, None, cap, cap]
    assert [s["above_cap"] for s in stores] == [False, False, True, False]
    assert all(s["errno"] == 0 for s in stores)


def test_asynchronous_limits_show_late_through_the_mount(tmp_path):
    cfg = load_board("sd888_phone").model_copy(deep=True)
    cfg.simulation.limit_apply_delay_ns = 300_000_000
    vb = VirtualBoard(tmp_path / "b", cfg)
    pol = "sys/devices/system/cpu/cpufreq/policy7"
    with mounted(vb.root) as mp:
        assert sh(f"echo 1305600 > {mp}/{pol}/scaling_max_freq").returncode == 0
        assert sh(f"cat {mp}/{pol}/scaling_max_freq").stdout.strip() == "2841600"  # the work item has not run
        time.sleep(0.35)
        assert sh(f"cat {mp}/{pol}/scaling_max_freq").stdout.strip() == "1305600"
    assert not is_mounted(mp)


def test_not_a_board_tree_is_said_not_a_traceback(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FuseUnavailable, match="not a virtual board tree"):
        with mounted(tmp_path / "nothing", tmp_path / "mnt"):
            pass
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_virtual_mount_command_unmounts_on_signal(tmp_path, sig):
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "governor.cli", "virtual-mount", "--board", "rk3588",
                             "--virtual-root", str(tmp_path / "b"), str(mp)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mp):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (mp / POL / "scaling_governor").read_text() == "schedutil\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "unmounted" in out and not is_mounted(mp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_virtual_mount_command_refuses_a_missing_mountpoint(tmp_path):
    out = subprocess.run([sys.executable, "-m", "governor.cli", "virtual-mount", "--board", "rk3588",
                          "--virtual-root", str(tmp_path / "b"), str(tmp_path / "absent")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "mount point must be an existing directory" in out.stderr
    assert "Traceback" not in out.stderr
