"""Other frequency managers found before the governor takes a board: a fake /proc and /run laid out
like the real ones, a virtual board's own state, and `dvfs-gov run` refusing (or proceeding when told)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dvfs_schema.loading import load_board
from governor.managers import active_units, certain, domain_findings, find_other_managers, running_managers
from sysfs_backends.virtual.board import VirtualBoard

CLI = [sys.executable, "-m", "governor"]
POLICY = "sys/devices/system/cpu/cpufreq/policy7"


def fake_proc(root: Path, procs: dict[int, tuple[str, list[str] | None]]) -> Path:
    """/proc/PID/comm (newline-terminated, as the kernel writes it) and cmdline (NUL-separated)."""
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)  # non-numeric entries are not processes
    (proc / "sys").mkdir()
    for pid, (comm, argv) in procs.items():
        d = proc / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
        if argv is not None:
            (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return proc


def test_known_managers_found_by_comm_and_by_script_name(tmp_path):
    proc = fake_proc(tmp_path, {
        1: ("systemd", ["/sbin/init"]),
        640: ("power-profiles-", ["/usr/libexec/power-profiles-daemon"]),  # comm cut at 15 characters
        702: ("python3", ["/usr/bin/python3", "-Es", "/usr/sbin/tuned", "-l", "-P"]),
        733: ("auto-cpufreq", None),  # cmdline unreadable: comm alone
        801: ("thermal-engine", ["/vendor/bin/thermal-engine"]),
        802: ("vendor.qti.hard", ["/vendor/bin/hw/vendor.qti.hardware.perf@2.0-service"]),
        803: ("android.hardwar", ["/vendor/bin/hw/android.hardware.camera.provider@2.4-service"]),  # not ours
        900: ("bash", ["bash"]),
    })
    found = {f.name: f for f in running_managers(proc)}
    assert set(found) == {"power-profiles-daemon", "tuned", "auto-cpufreq", "Qualcomm thermal-engine",
                          "Qualcomm perf HAL"}
    assert found["tuned"].evidence == "running as pid 702"
    assert "cpufreq" in found["tuned"].effect


def test_nothing_found_on_a_clean_system(tmp_path):
    proc = fake_proc(tmp_path, {1: ("systemd", ["/sbin/init"]), 50: ("sshd", ["sshd: /usr/sbin/sshd"]),
                                51: ("python3", ["/usr/bin/python3", "-m", "http.server"]),
                                52: ("kworker/0:1", [])})
    (tmp_path / "run" / "systemd" / "units").mkdir(parents=True)
    (tmp_path / "run" / "systemd" / "units" / "invocation:ssh.service").symlink_to("abc")
    assert find_other_managers(None, proc, tmp_path / "run") == []


def test_active_systemd_units_from_runtime_records(tmp_path):
    units = tmp_path / "run" / "systemd" / "units"
    units.mkdir(parents=True)
    (units / "invocation:thermald.service").symlink_to("0f3a")  # systemd keeps these as symlinks
    (units / "invocation:nvpmodel.service").symlink_to("77aa")
    names = {f.name for f in active_units(tmp_path / "run")}
    assert names == {"thermald", "nvpmodel"}
    # the same manager seen as a process and as a unit is named once
    proc = fake_proc(tmp_path, {300: ("thermald", ["/usr/sbin/thermald", "--systemd"])})
    assert [f.name for f in find_other_managers(None, proc, tmp_path / "run")] == ["thermald", "nvpmodel"]


def test_domain_held_by_another_program_seen_through_the_backend(tmp_path):
    board = VirtualBoard(tmp_path / "vb", load_board("rk3588"))  # offers the userspace governor
    backend = board.backend(tmp_path / "saved.json")
    assert find_other_managers(backend, local=False) == []  # kernel defaults: nothing
    board.kernel.write("/sys/devices/system/cpu/cpufreq/policy4/scaling_governor", "userspace")  # someone else
    found = find_other_managers(backend, local=False)
    assert [f.name for f in found] == ["maybe a program holding the cpu domain"]
    # a driver may select userspace itself (the arm64 guest's imx-bus devfreq does): a warning, not a refusal
    assert not found[0].certain and certain(found, "board 'rk3588'") == []
    # a run of ours that was killed leaves the same sign, with our state file: not another manager
    assert domain_findings(backend.state(), ours_saved=True) == []


def _pin_lowest(board: VirtualBoard) -> None:
    """Limits pinned to one frequency through the board's kernel, as jetson_clocks or a script leaves
    them: long since taken up (cpufreq applies a new limit from a work item, ~1 ms later; read
    sooner, the old max still shows, as on a real kernel: one CI run in four read it that soon)."""
    lowest = min(int(x) for x in (board.root / POLICY / "scaling_available_frequencies").read_text().split())
    board.kernel.write(f"/{POLICY}/scaling_max_freq", str(lowest))
    for _ in range(1000):
        if board.kernel.read(f"/{POLICY}/scaling_max_freq").strip() == str(lowest):
            return
        time.sleep(0.001)
    raise AssertionError("the kernel never took the pinned limit up")


def test_pinned_limits_seen_through_the_backend(tmp_path):
    board = VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    _pin_lowest(board)
    found = find_other_managers(board.backend(tmp_path / "saved.json"), local=False)
    assert [f.name for f in found] == ["limits pinned on the cpu domain"] and "jetson_clocks" in found[0].evidence


def _config(tmp: Path, **extra) -> Path:
    cfg = {"board": "sd888_phone", "socket": str(tmp / "gov.sock"), "log_level": "warning",
           "backend": {"kind": "virtual", "virtual_root": str(tmp / "vb"), "state_file": str(tmp / "saved.json")},
           "models": {"yolo": {"simulate": "yolo_tiny"}}, **extra}
    (tmp / "gov.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "gov.yaml"


def _held_board(tmp: Path) -> None:
    """The virtual board with its CPU limits pinned through its kernel, as another program would."""
    _pin_lowest(VirtualBoard(tmp / "vb", load_board("sd888_phone")))


def _starts(tmp: Path, config: Path, *args: str) -> str:
    """Start `dvfs-gov run`, wait for its socket, stop it; returns its stderr."""
    proc = subprocess.Popen([*CLI, "run", "--config", str(config), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if (tmp / "gov.sock").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None and (tmp / "gov.sock").exists(), proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    return err


def test_run_refuses_a_held_board_unless_told_to_proceed(tmp_path):
    _held_board(tmp_path)
    out = subprocess.run([*CLI, "run", "--config", str(_config(tmp_path))], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert "other frequency managers are active on board 'sd888_phone'" in out.stderr
    assert "--allow-other-managers" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "gov.sock").exists()
    pinned = (tmp_path / "vb" / POLICY / "scaling_max_freq").read_text()
    assert pinned == (tmp_path / "vb" / POLICY / "scaling_min_freq").read_text()  # untouched
    err = _starts(tmp_path, _config(tmp_path), "--allow-other-managers")
    assert "restore incomplete" not in err
    assert (tmp_path / "vb" / POLICY / "scaling_max_freq").read_text() == pinned  # given back as it was


def test_config_key_allows_other_managers(tmp_path):
    _held_board(tmp_path)
    _starts(tmp_path, _config(tmp_path, allow_other_managers=True))


def test_profile_refuses_a_pinned_board_before_building_kernels(tmp_path):
    VirtualBoard(tmp_path / "vb", load_board("sd888_phone"))
    # a plain tree driven by the linux backend: its files are the truth, pinned by writing them
    policy = tmp_path / "vb" / POLICY
    (policy / "scaling_max_freq").write_text((policy / "scaling_min_freq").read_text())
    out = subprocess.run([*CLI, "profile", "--model", "yolo_tiny", "--board", "sd888_phone", "--backend", "linux",
                          "--sysfs-root", str(tmp_path / "vb"), "--state-file", str(tmp_path / "s.json"),
                          "-o", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "limits pinned on the cpu domain" in out.stderr and "--allow-other-managers" in out.stderr
    assert "profiling" not in out.stderr and not (tmp_path / "p.json").exists()
