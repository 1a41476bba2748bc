"""One owner per board, nothing left behind: the state file, its lock, restore and the socket path.

Everything runs for real: `dvfs-gov run` daemons and `dvfs-gov restore` in their own processes on
the virtual board, SIGKILL, real files and symlinks, real Unix sockets.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dvfs_schema.loading import load_board
from governor.client import GovernorClient
from governor.daemon import SocketInUse, _claim_socket
from sysfs_backends.lifecycle import restoring
from sysfs_backends.linux import LinuxBackend
from sysfs_backends.state_file import BoardBusy, RestoreIncomplete, StateFileError
from sysfs_backends.sysfs import BackendError
from sysfs_backends.transport import SysfsIOError
from sysfs_backends.virtual.board import VirtualBoard, build_tree

CLI = [sys.executable, "-m", "governor.cli"]
CPU = "sys/devices/system/cpu/cpufreq/policy7"  # sd888_phone's inference policy
GPU = "sys/class/devfreq/3d00000.qcom,kgsl-3d0"  # its GPU (minmax)
BOOT = {"cpu": ("schedutil", "844800", "2841600"), "gpu": ("msm-adreno-tz", "315000000", "840000000")}


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


def settings(vroot: Path) -> dict[str, tuple[str, str, str]]:
    return {"cpu": tuple(read(vroot, f"{CPU}/{a}") for a in ("scaling_governor", "scaling_min_freq",
                                                               "scaling_max_freq")),
            "gpu": tuple(read(vroot, f"{GPU}/{a}") for a in ("governor", "min_freq", "max_freq"))}


def write_config(tmp: Path, sock: str = "gov.sock") -> Path:
    cfg = {"board": "sd888_phone", "socket": str(tmp / sock), "log_level": "info",
           "backend": {"kind": "virtual", "virtual_root": str(tmp / "vb"), "state_file": str(tmp / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}}}
    path = tmp / f"gov-{sock}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(tmp: Path, sock: str = "gov.sock") -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "run", "--config", str(write_config(tmp, sock))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(1200):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            GovernorClient(str(tmp / sock)).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not start")


def pin(tmp: Path, sock: str = "gov.sock") -> GovernorClient:
    """An app that asked for a frame and stays connected (with every app gone the daemon hands
    the domains back: see the daemon's idle release)."""
    c = GovernorClient(str(tmp / sock))
    c.before_frame("yolo", 40.0)
    return c


def restore_cli(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "restore", "--board", "sd888_phone", "--virtual-root", str(tmp / "vb"),
                           "--state-file", str(tmp / "saved.json"), *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def owner(tmp_path):
    """A running daemon that has pinned the board."""
    proc = start(tmp_path)
    app = pin(tmp_path)
    assert settings(tmp_path / "vb") != BOOT
    yield proc, tmp_path
    app.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# ---- 1. one owner per board ------------------------------------------------------------------
def test_second_daemon_on_another_socket_is_refused_and_sigkill_still_recoverable(owner):
    proc, tmp = owner
    saved_before = (tmp / "saved.json").read_text()
    second = subprocess.run([*CLI, "run", "--config", str(write_config(tmp, "other.sock"))],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"owned by a running governor (pid {proc.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    # the live owner's state file is untouched and the owner still serves
    assert (tmp / "saved.json").read_text() == saved_before
    assert settings(tmp / "vb") != BOOT
    with GovernorClient(str(tmp / "gov.sock")) as c:
        assert c.status()["ok"]
    # after a SIGKILL the next start restores the true originals
    proc.kill()
    proc.wait(timeout=30)
    assert settings(tmp / "vb") != BOOT
    again = start(tmp, "other.sock")
    try:
        saved = json.loads((tmp / "saved.json").read_text())
        assert (saved["pid"], saved["domains"]["cpu"]["max"]) == (again.pid, 2841600)
        assert settings(tmp / "vb") == BOOT  # recovered, nothing applied yet
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    assert settings(tmp / "vb") == BOOT
    assert not (tmp / "saved.json").exists()


def test_restore_never_touches_a_live_owners_board_unless_forced(owner):
    proc, tmp = owner
    pinned = settings(tmp / "vb")
    saved_before = (tmp / "saved.json").read_text()
    out = restore_cli(tmp)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"pid {proc.pid}" in out.stderr and "--force" in out.stderr and "Traceback" not in out.stderr
    assert settings(tmp / "vb") == pinned
    assert (tmp / "saved.json").read_text() == saved_before
    assert proc.poll() is None
    forced = restore_cli(tmp, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "WARNING" in forced.stderr and f"pid {proc.pid}" in forced.stderr
    assert settings(tmp / "vb") == BOOT
    assert (tmp / "saved.json").read_text() == saved_before  # still the owner's
    # the owner pins again and is SIGKILLed: `restore` now puts back the true originals
    with GovernorClient(str(tmp / "gov.sock")) as c:  # a pair other than before: written
        c.before_frame("yolo", 20.0)
    assert settings(tmp / "vb") != BOOT
    proc.kill()
    proc.wait(timeout=30)
    out = restore_cli(tmp)
    assert out.returncode == 0, out.stderr
    assert "restored cpu: scaling_max_freq = 2841600" in out.stdout
    assert settings(tmp / "vb") == BOOT
    assert not (tmp / "saved.json").exists()


def test_restore_with_another_state_file_still_sees_the_owner(owner):
    proc, tmp = owner
    pinned = settings(tmp / "vb")
    base = [*CLI, "restore", "--board", "sd888_phone", "--virtual-root", str(tmp / "vb")]
    for extra in ([], ["--defaults"], ["--state-file", str(tmp / "elsewhere.json")]):
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        assert f"pid {proc.pid}" in out.stderr
    assert settings(tmp / "vb") == pinned
    assert (tmp / "saved.json").exists()


def test_sigterm_with_a_failing_restore_exits_nonzero_and_keeps_state_file(owner):
    proc, tmp = owner
    vb = VirtualBoard(tmp / "vb")
    vb.kernel.inject_fault(f"/{CPU}/scaling_max_freq", errno.EBUSY)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    err = proc.stderr.read()
    assert "restore incomplete" in err and "EBUSY" in err and "Traceback" not in err
    assert settings(tmp / "vb")["gpu"] == BOOT["gpu"]  # the CPU's failure did not abandon the GPU
    assert (tmp / "saved.json").exists()
    vb.kernel.inject_fault(f"/{CPU}/scaling_max_freq", None)
    out = restore_cli(tmp)
    assert out.returncode == 0, out.stderr
    assert settings(tmp / "vb") == BOOT


def test_in_process_governor_and_lifecycle_refused_while_daemon_owns_board(owner):
    from governor.app import build_governor
    from governor.config import load_governor_config

    proc, tmp = owner
    cfg, cfg_dir = load_governor_config(str(tmp / "gov-gov.sock.yaml"))
    with pytest.raises(BoardBusy, match=f"pid {proc.pid}"):
        build_governor(cfg, cfg_dir)
    vb = VirtualBoard(tmp / "vb")
    with pytest.raises(BoardBusy, match=f"pid {proc.pid}"):
        with restoring(vb.backend(tmp / "saved.json"), handle_signals=False):
            pass
    assert settings(tmp / "vb") != BOOT
    assert json.loads((tmp / "saved.json").read_text())["pid"] == proc.pid


def test_two_backends_in_one_process(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    first = vb.backend(tmp_path / "s.json")
    first.apply(cpu_khz=960_000, gpu_hz=315_000_000)
    second = vb.backend(tmp_path / "s.json")
    with pytest.raises(BoardBusy, match="this process"):
        second.apply(cpu_khz=2_841_600)
    with pytest.raises(BoardBusy):
        second.restore()
    assert json.loads((tmp_path / "s.json").read_text())["domains"]["cpu"]["max"] == 2841600
    first.restore()
    assert settings(tmp_path / "vb") == BOOT
    # the first gave the board back: the second may own it now
    second.apply(cpu_khz=960_000)
    second.restore()
    assert settings(tmp_path / "vb") == BOOT


def test_restore_after_a_sigkill_under_a_thermal_cap_puts_back_a_floor_the_cap_hides(tmp_path):
    """The originals had a CPU floor (a perf HAL's 1785600), the governor pinned the top and was
    SIGKILLed, and the phone is hot: the cap (1785600) makes scaling_min_freq show the original
    floor while the pinned request is still in the kernel. The restore writes every limit; one it
    took for done came back as the top once the cap lifted."""
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    vb.kernel.write(f"/{CPU}/scaling_min_freq", "1785600")
    proc = start(tmp_path)
    try:
        app = pin(tmp_path)
        app.before_frame("yolo", 1.0)  # infeasible: the top point
        assert read(tmp_path / "vb", f"{CPU}/scaling_min_freq") == "2841600"
        proc.kill()
        proc.wait(timeout=30)
        app.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    vb.kernel.force_thermal_cap(True)
    assert read(tmp_path / "vb", f"{CPU}/scaling_min_freq") == "1785600"  # the cap shows the floor
    out = restore_cli(tmp_path)
    assert out.returncode == 0, out.stderr
    vb.kernel.force_thermal_cap(False)
    assert settings(tmp_path / "vb")["cpu"] == ("schedutil", "1785600", "2841600")
    assert not (tmp_path / "saved.json").exists()


# ---- 2. a restore that cannot complete -----------------------------------------------------
def test_failed_write_still_attempts_every_domain_and_keeps_state_file(owner):
    proc, tmp = owner
    proc.kill()
    proc.wait(timeout=30)
    vb = VirtualBoard(tmp / "vb")
    vb.kernel.inject_fault(f"/{CPU}/scaling_max_freq", errno.EBUSY)
    vb.kernel.inject_fault(f"/{CPU}/scaling_min_freq", errno.EBUSY)
    out = restore_cli(tmp)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "EBUSY" in out.stderr and "Traceback" not in out.stderr
    assert "scaling_min_freq" in out.stderr  # the restore writes both limits, min first here
    assert settings(tmp / "vb")["gpu"] == BOOT["gpu"]  # the GPU was not abandoned
    assert (tmp / "saved.json").exists()
    vb.kernel.inject_fault(f"/{CPU}/scaling_max_freq", None)
    vb.kernel.inject_fault(f"/{CPU}/scaling_min_freq", None)
    out = restore_cli(tmp)
    assert out.returncode == 0, out.stderr
    assert settings(tmp / "vb") == BOOT
    assert not (tmp / "saved.json").exists()


def test_refused_governor_name_is_a_failure_not_restored(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    be = vb.backend(tmp_path / "saved.json")
    be.apply(cpu_khz=960_000, gpu_hz=315_000_000)
    be.close()  # as if killed: the state file stays
    data = json.loads((tmp_path / "saved.json").read_text())
    data["domains"]["cpu"]["governor"] = "interactive"  # not available on this kernel
    (tmp_path / "saved.json").write_text(json.dumps(data))
    out = restore_cli(tmp_path)
    assert out.returncode == 1
    assert "governor 'interactive' not restored" in out.stderr and "EINVAL" in out.stderr
    assert "restored cpu: scaling_governor" not in out.stdout
    assert settings(tmp_path / "vb")["gpu"] == BOOT["gpu"]
    assert read(tmp_path / "vb", f"{CPU}/scaling_max_freq") == "2841600"  # limits still put back
    assert (tmp_path / "saved.json").exists()


# ---- 3. damaged state files ----------------------------------------------------------------
GOOD = {"format": "deadline-dvfs.saved/1", "board": "sd888_phone", "backend": "virtual", "pid": 1,
        "domains": {"cpu": {"governor": "schedutil", "min": 844800, "max": 2841600},
                    "gpu": {"governor": "msm-adreno-tz", "min": 315000000, "max": 840000000}}}


def _with(**domain_cpu) -> str:
    data = json.loads(json.dumps(GOOD))
    data["domains"]["cpu"].update(domain_cpu)
    return json.dumps(data)


DAMAGED = {
    "empty": ("", "empty"),
    "truncated": (json.dumps(GOOD)[:60], "not valid JSON"),
    "nan": (_with(max=float("nan")), "not a number JSON allows"),
    "garbage": (b"\xff\xfe\x00garbage\x80", "not text"),
    "unknown_domain": (json.dumps({**GOOD, "domains": {**GOOD["domains"], "npu": GOOD["domains"]["cpu"]}}),
                       "unknown domain(s) npu"),
    "swapped": (_with(min=2841600, max=844800), "above max"),
    "float": (_with(max=2841600.5), "domains.cpu.max"),
    "other_board": (json.dumps({**GOOD, "board": "rk3588"}), "belongs to board 'rk3588'"),
    "other_tree": (json.dumps({**GOOD, "target": "sysfs tree /elsewhere"}), "belongs to sysfs tree /elsewhere"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_state_file_is_named_never_adopted_and_defaults_is_the_way_out(tmp_path, case):
    content, what = DAMAGED[case]
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    be = vb.backend(tmp_path / "other.json")
    be.apply(cpu_khz=960_000, gpu_hz=315_000_000)  # the board is left pinned...
    be.close()
    state = tmp_path / "saved.json"  # ...and its state file is damaged
    state.write_bytes(content.encode() if isinstance(content, str) else content)
    out = restore_cli(tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert str(state) in out.stderr and what in out.stderr, out.stderr
    assert "--defaults" in out.stderr and "Traceback" not in out.stderr
    # a new owner refuses too, instead of saving the pinned values as originals
    with pytest.raises(StateFileError, match=what.replace("(", r"\(").replace(")", r"\)")):
        with restoring(vb.backend(state), handle_signals=False):
            pass
    assert state.read_bytes() == (content.encode() if isinstance(content, str) else content)
    out = restore_cli(tmp_path, "--defaults")
    assert out.returncode == 0, out.stderr
    assert "kernel's defaults" in out.stdout
    assert settings(tmp_path / "vb") == BOOT
    assert state.exists() == case.startswith("other_")  # another board's originals are kept


def test_restore_without_state_file_says_the_board_is_not_at_defaults(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    be = vb.backend(tmp_path / "saved.json")
    be.apply(cpu_khz=960_000)
    be.close()
    (tmp_path / "saved.json").unlink()  # deleted
    out = restore_cli(tmp_path)
    assert "not at the kernel's defaults" in out.stdout and "--defaults" in out.stdout
    assert "cpu: governor schedutil, limits 960000..960000" in out.stdout


def test_state_file_deleted_while_running_is_written_again(owner):
    proc, tmp = owner
    (tmp / "saved.json").unlink()
    with GovernorClient(str(tmp / "gov.sock")) as c:
        c.before_frame("yolo", 12.0)  # a different pair: an apply
        c.before_frame("yolo", 80.0)
    assert json.loads((tmp / "saved.json").read_text())["domains"]["cpu"]["max"] == 2841600
    proc.kill()
    proc.wait(timeout=30)
    out = restore_cli(tmp)
    assert out.returncode == 0, out.stderr
    assert settings(tmp / "vb") == BOOT


def test_unwritable_state_dir_is_a_clear_error_and_nothing_changes(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    (tmp_path / "afile").write_text("")
    be = vb.backend(tmp_path / "afile" / "saved.json")  # its parent is not a directory
    with pytest.raises(StateFileError, match="afile"):
        be.apply(cpu_khz=960_000)
    assert settings(tmp_path / "vb") == BOOT


# ---- 4. userspace setpoint -----------------------------------------------------------------
@pytest.mark.parametrize("domain", ["cpu", "gpu"])
def test_original_userspace_setpoint_is_restored(tmp_path, domain):
    board = load_board("rk3588")  # userspace mechanism on both domains
    vb = VirtualBoard(tmp_path / "vb", board)
    if domain == "cpu":
        d, setpoint, value = f"/sys/devices/system/cpu/cpufreq/{board.cpu.inference_policy}", 1_008_000, None
        gov, attr = f"{d}/scaling_governor", f"{d}/scaling_setspeed"
    else:
        d, setpoint, value = f"/sys/class/devfreq/{board.gpu.node}", board.gpu.frequencies_hz[1], None
        gov, attr = f"{d}/governor", f"{d}/userspace/set_freq"
    vb.kernel.write(gov, "userspace")  # the board boots with the userspace governor at a setpoint
    vb.kernel.write(attr, str(setpoint))
    attr, gov = attr.lstrip("/"), gov.lstrip("/")
    assert read(vb.root, attr) == str(setpoint)
    be = vb.backend(tmp_path / "s.json")
    with restoring(be, handle_signals=False):
        value = be.domains()[domain].frequencies[-1]
        be.apply({domain: value})
        assert read(vb.root, attr) == str(value)
        assert json.loads((tmp_path / "s.json").read_text())["domains"][domain]["setpoint"] == setpoint
    assert read(vb.root, attr) == str(setpoint)
    assert read(vb.root, gov) == "userspace"


# ---- 5. writes never follow symlinks out ---------------------------------------------------
def test_planted_symlink_at_state_file_or_tmp_never_overwrites_its_target(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    state = tmp_path / "st" / "saved.json"
    state.parent.mkdir()
    (state.parent / "saved.json.tmp").symlink_to(victim)
    be = vb.backend(state)
    be.apply(cpu_khz=960_000)  # the .tmp link is replaced by our own file, not written through
    assert victim.read_text() == "precious\n"
    assert not state.is_symlink() and json.loads(state.read_text())["board"] == "sd888_phone"
    be.restore()
    state.symlink_to(victim)  # planted at the state file itself
    with pytest.raises(StateFileError, match="symbolic link"):
        vb.backend(state).apply(cpu_khz=960_000)
    assert victim.read_text() == "precious\n"
    assert settings(tmp_path / "vb") == BOOT
    state.unlink()
    assert not (state.parent / "saved.json.lock").exists()  # the refused start gave the lock back
    (state.parent / "saved.json.lock").symlink_to(victim)  # and at the lock
    with pytest.raises(StateFileError, match="lock file is a symbolic link"):
        vb.backend(state).apply(cpu_khz=960_000)
    assert victim.read_text() == "precious\n"


def _plain_tree(tmp_path: Path, board_name: str = "rk3588") -> tuple[Path, LinuxBackend]:
    """A tree laid out like /sys with no virtual kernel behind it: plain files, plain writes."""
    board = load_board(board_name)
    root = build_tree(tmp_path / "tree", board)
    return root, LinuxBackend(board, root, state_file=tmp_path / "s.json")


def test_attribute_symlink_is_not_followed(tmp_path):
    root, be = _plain_tree(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    attr = root / "sys/devices/system/cpu/cpufreq/policy4/scaling_setspeed"
    attr.unlink()
    attr.symlink_to(victim)
    with pytest.raises(SysfsIOError) as info:
        be.apply(cpu_khz=1_008_000)
    assert info.value.errno == errno.ELOOP
    assert victim.read_text() == "precious\n"


def test_domain_directory_symlink_out_of_tree_is_refused(tmp_path):
    root, be = _plain_tree(tmp_path)
    board = load_board("rk3588")
    node = root / "sys/class/devfreq" / board.gpu.node
    outside = tmp_path / "outside"
    node.rename(outside)
    node.symlink_to(outside)
    with pytest.raises(BackendError, match="outside the sysfs tree"):
        be.apply(gpu_hz=board.gpu.frequencies_hz[0])
    assert read(outside, "governor") == board.gpu.default_governor


def test_devfreq_directory_as_a_kernel_symlink_is_resolved_and_written_there(tmp_path):
    root, be = _plain_tree(tmp_path)
    board = load_board("rk3588")
    node = root / "sys/class/devfreq" / board.gpu.node
    real = root / "sys/devices/platform" / board.gpu.node / "devfreq" / board.gpu.node
    real.parent.mkdir(parents=True)
    node.rename(real)
    node.symlink_to(os.path.relpath(real, node.parent))  # as the kernel lays it out
    (real / "governor").write_text("userspace\n")  # a plain tree: no kernel makes userspace/
    (real / "userspace").mkdir()
    (real / "userspace" / "set_freq").write_text("0\n")
    be.apply(gpu_hz=board.gpu.frequencies_hz[0])
    assert read(real, "userspace/set_freq") == str(board.gpu.frequencies_hz[0])
    # a link planted later where the resolved directory was reached cannot redirect writes
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "userspace").mkdir()
    (victim_dir / "userspace" / "set_freq").write_text("precious\n")
    node.unlink()
    node.symlink_to(victim_dir)
    be.apply(gpu_hz=board.gpu.frequencies_hz[1])
    assert read(victim_dir, "userspace/set_freq") == "precious"
    assert read(real, "userspace/set_freq") == str(board.gpu.frequencies_hz[1])


def test_virtual_kernel_refuses_writes_through_symlinks(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    with pytest.raises(OSError) as info:  # cpuN/cpufreq is a link: writes go to the real policy dir
        vb.kernel.write("/sys/devices/system/cpu/cpu7/cpufreq/scaling_max_freq", "960000")
    assert info.value.errno == errno.ELOOP
    attr = tmp_path / "vb" / CPU / "scaling_max_freq"
    attr.unlink()
    attr.symlink_to(victim)
    with pytest.raises(OSError) as info:
        vb.kernel.write(f"/{CPU}/scaling_max_freq", "960000")
    assert info.value.errno == errno.ELOOP
    assert victim.read_text() == "precious\n"
    attr.unlink()
    attr.write_text("2841600\n")
    target = tmp_path / "vb" / GPU / "target_freq"  # written by the kernel itself on a change
    target.unlink()
    target.symlink_to(victim)
    be = vb.backend(tmp_path / "s.json")
    be.apply(gpu_hz=315_000_000)
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and read(tmp_path / "vb", f"{GPU}/target_freq") == "315000000"
    be.restore()


# ---- 6. the socket path ----------------------------------------------------------------------
def test_socket_path_occupied_by_something_else_is_left_alone(tmp_path):
    regular = tmp_path / "file.sock"
    regular.write_text("data\n")
    directory = tmp_path / "dir.sock"
    directory.mkdir()
    link = tmp_path / "link.sock"
    link.symlink_to(regular)
    for path, what in ((regular, "a regular file"), (directory, "a directory"), (link, "a symbolic link")):
        with pytest.raises(SocketInUse, match=what):
            _claim_socket(path)
    assert regular.read_text() == "data\n" and directory.is_dir() and link.is_symlink()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(tmp_path / "live.sock"))
    live.listen(1)
    try:
        with pytest.raises(SocketInUse, match=f"pid {os.getpid()}"):
            _claim_socket(tmp_path / "live.sock")
        assert (tmp_path / "live.sock").exists()
    finally:
        live.close()
    _claim_socket(tmp_path / "live.sock")  # nobody listens now: stale, removed
    assert not (tmp_path / "live.sock").exists()


def test_daemon_refuses_a_regular_file_at_its_socket_path(tmp_path):
    (tmp_path / "gov.sock").write_text("not a socket\n")
    out = subprocess.run([*CLI, "run", "--config", str(write_config(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "a regular file" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "gov.sock").read_text() == "not a socket\n"
    assert settings(tmp_path / "vb") == BOOT and not (tmp_path / "saved.json").exists()


def test_restore_incomplete_exception_lists_every_failure(tmp_path):
    vb = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    be = vb.backend(tmp_path / "s.json")
    be.apply(cpu_khz=960_000, gpu_hz=315_000_000)
    vb.kernel.inject_fault(f"/{CPU}/scaling_max_freq", errno.EBUSY)
    vb.kernel.inject_fault(f"/{GPU}/max_freq", errno.EACCES)
    with pytest.raises(RestoreIncomplete) as info:
        be.restore()
    assert len(info.value.failures) == 2
    assert (tmp_path / "s.json").exists()
    vb.kernel.inject_fault(f"/{CPU}/scaling_max_freq", None)
    vb.kernel.inject_fault(f"/{GPU}/max_freq", None)
    be.restore()  # a later try, same process, still the owner
    assert settings(tmp_path / "vb") == BOOT
    assert not (tmp_path / "s.json").exists()


def test_state_file_of_a_live_governor_without_lock_is_not_taken(tmp_path):
    """A governor from before the ownership lock (or one whose lock file was deleted) still runs:
    its recorded pid is alive, so its state file is neither restored nor deleted."""
    VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    legacy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "dvfs-gov", "run"])
    try:
        (tmp_path / "saved.json").write_text(json.dumps({**GOOD, "pid": legacy.pid}))
        out = restore_cli(tmp_path)
        assert out.returncode == 2 and f"pid {legacy.pid}" in out.stderr, out.stderr
        assert (tmp_path / "saved.json").exists()
    finally:
        legacy.kill()
        legacy.wait()
    out = restore_cli(tmp_path)  # gone now: its originals are put back
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "saved.json").exists()


def test_daemon_refuses_to_start_on_a_damaged_state_file(tmp_path):
    VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    (tmp_path / "saved.json").write_text(json.dumps(GOOD)[:70])
    out = subprocess.run([*CLI, "run", "--config", str(write_config(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{tmp_path / 'saved.json'}: the state file is not valid JSON" in out.stderr
    assert (tmp_path / "saved.json").read_text() == json.dumps(GOOD)[:70]
    assert not (tmp_path / "gov.sock").exists()


def test_daemon_on_its_way_out_removes_only_its_own_socket(owner):
    proc, tmp = owner
    sock = tmp / "gov.sock"
    sock.rename(tmp / "moved.sock")
    sock.write_text("someone else's file\n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert sock.read_text() == "someone else's file\n"
    assert settings(tmp / "vb") == BOOT


def test_profile_refused_while_a_daemon_owns_the_board(owner):
    """`profile` drives the same tree through the linux backend with its default state file: the
    per-board lock still names the owner."""
    proc, tmp = owner
    pinned = settings(tmp / "vb")
    out = subprocess.run([*CLI, "profile", "--model", "yolo_tiny", "--board", "sd888_phone", "--backend", "linux",
                          "--sysfs-root", str(tmp / "vb"), "-o", str(tmp / "p.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"pid {proc.pid}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert settings(tmp / "vb") == pinned and not (tmp / "p.json").exists()


def test_default_virtual_root_planted_as_a_symlink_is_refused(tmp_path, monkeypatch):
    from sysfs_backends.registry import default_virtual_root

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    board = "test-planted-board"
    root = default_virtual_root(board)  # free: ours to make
    assert not root.exists()
    root.symlink_to(tmp_path)
    try:
        with pytest.raises(PermissionError, match="not a directory of ours"):
            default_virtual_root(board)
    finally:
        root.unlink()


def test_idle_release_hands_the_domains_back_but_keeps_the_board(tmp_path):
    """With every app gone the daemon hands the domains back, yet still owns the board: it takes
    them again on the next frame, so a second governor is still refused meanwhile."""
    proc = start(tmp_path)
    try:
        pin(tmp_path).close()  # the only app leaves
        for _ in range(200):
            if settings(tmp_path / "vb") == BOOT:
                break
            time.sleep(0.05)
        assert settings(tmp_path / "vb") == BOOT
        second = subprocess.run([*CLI, "run", "--config", str(write_config(tmp_path, "other.sock"))],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and f"pid {proc.pid}" in second.stderr, second.stderr
        app = pin(tmp_path)  # the next frame takes the domains again
        assert settings(tmp_path / "vb") != BOOT
        app.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert settings(tmp_path / "vb") == BOOT
