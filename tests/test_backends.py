"""Backends against real file trees laid out like the kernel's /sys (never the machine's own)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dvfs_schema.board import BoardConfig
from dvfs_schema.loading import ConfigError, load_board, load_yaml_model
from sysfs_backends.lifecycle import restoring
from sysfs_backends.linux import LinuxBackend
from sysfs_backends.sysfs import BackendError
from sysfs_backends.transport import SysfsIOError
from sysfs_backends.virtual.board import VirtualBoard, build_tree

VIRTUAL = ["sd888_phone", "pixel6_phone", "rk3588", "orin_nano"]
CPUFREQ = "sys/devices/system/cpu/cpufreq"
DEVFREQ = "sys/class/devfreq"


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


@pytest.fixture
def board_at(tmp_path, drive):
    def make(name: str):
        vb = VirtualBoard(tmp_path / name, load_board(name))
        return vb, drive(vb, tmp_path / f"{name}.state.json")
    return make


@pytest.mark.parametrize("name", VIRTUAL)
def test_discovery_matches_board(board_at, name):
    vb, be = board_at(name)
    found = be.discover()
    cfg = vb.board
    assert found.domains["cpu"].frequencies == cfg.cpu.inference.frequencies_khz
    assert found.domains["cpu"].cpus == cfg.cpu.inference.cpus
    assert found.domains["gpu"].frequencies == cfg.gpu.frequencies_hz
    assert found.domains["gpu"].unit == "Hz" and found.domains["cpu"].unit == "kHz"
    assert found.states["cpu"].governor == cfg.cpu.inference.default_governor
    assert found.states["gpu"].cur == cfg.gpu.frequencies_hz[-1]


def test_userspace_mechanism_cpufreq_and_devfreq(board_at, tmp_path):
    vb, be = board_at("rk3588")
    root = vb.root
    pol, gpu = f"{CPUFREQ}/policy4", f"{DEVFREQ}/fb000000.gpu"
    assert read(root, f"{pol}/scaling_setspeed") == "<unsupported>"
    assert not (root / gpu / "userspace").exists()
    res = be.apply(cpu_khz=1_416_000, gpu_hz=600_000_000)
    assert res.effective == {"cpu": 1_416_000, "gpu": 600_000_000}
    assert read(root, f"{pol}/scaling_governor") == "userspace"
    assert read(root, f"{pol}/scaling_setspeed") == "1416000"
    assert read(root, f"{pol}/scaling_cur_freq") == "1416000"
    assert read(root, f"{gpu}/governor") == "userspace"
    assert read(root, f"{gpu}/userspace/set_freq") == "600000000"
    assert read(root, f"{gpu}/cur_freq") == "600000000"
    assert res.writes == 4 and res.round_trips == 1
    # the limits were never touched under userspace
    assert read(root, f"{pol}/scaling_min_freq") == "408000"
    res = be.apply(cpu_khz=1_416_000, gpu_hz=800_000_000)
    assert res.writes == 1  # only the GPU's set_freq
    be.restore()
    assert read(root, f"{pol}/scaling_governor") == "schedutil"
    assert read(root, f"{gpu}/governor") == "simple_ondemand"
    assert not (root / gpu / "userspace").exists()


def test_minmax_mechanism_pins_limits_and_reads_kgsl_clock(board_at):
    vb, be = board_at("sd888_phone")
    root = vb.root
    pol, gpu = f"{CPUFREQ}/policy7", f"{DEVFREQ}/3d00000.qcom,kgsl-3d0"
    res = be.apply(cpu_khz=1_305_600, gpu_hz=443_000_000)
    assert read(root, f"{pol}/scaling_min_freq") == read(root, f"{pol}/scaling_max_freq") == "1305600"
    assert read(root, f"{gpu}/min_freq") == read(root, f"{gpu}/max_freq") == "443000000"
    assert read(root, "sys/class/kgsl/kgsl-3d0/gpuclk") == "443000000"
    assert read(root, f"{pol}/scaling_governor") == "schedutil"  # governor untouched
    assert res.effective == {"cpu": 1_305_600, "gpu": 443_000_000}
    # up and down again: any order mistake would make the kernel refuse (min > max)
    for c, g in [(2_841_600, 840_000_000), (844_800, 315_000_000), (2_035_200, 607_000_000)]:
        res = be.apply(cpu_khz=c, gpu_hz=g)
        assert res.effective == {"cpu": c, "gpu": g}
        assert res.writes == 4  # one per changed limit


def test_unsupported_frequency_rounded_by_kernel_rule_and_said(board_at):
    _, be = board_at("rk3588")
    res = be.apply(cpu_khz=1_300_000, gpu_hz=650_000_000)
    assert res.target == {"cpu": 1_416_000, "gpu": 700_000_000}
    assert res.effective == res.target
    assert any("1300000 kHz is not supported" in n and "1416000" in n for n in res.notes)
    res = be.apply(cpu_khz=9_999_999, gpu_hz=50)
    assert res.target == {"cpu": 2_400_000, "gpu": 300_000_000}


def test_no_write_when_nothing_changes(board_at):
    _, be = board_at("sd888_phone")
    be.apply(cpu_khz=1_555_200, gpu_hz=540_000_000)
    before = be.transport.writes
    res = be.apply(cpu_khz=1_555_200, gpu_hz=540_000_000)
    assert res.writes == 0 and be.transport.writes == before


def test_thermal_cap_shows_as_lower_effective_frequency(board_at):
    vb, be = board_at("pixel6_phone")
    vb.kernel.force_thermal_cap(True)
    res = be.apply(cpu_khz=2_802_000, gpu_hz=848_000_000)
    assert res.effective == {"cpu": 1_826_000, "gpu": 471_000_000}
    assert res.capped and any("thermal cap" in n for n in res.notes)
    vb.kernel.force_thermal_cap(False)
    assert be.apply(cpu_khz=2_802_000, gpu_hz=848_000_000).effective == {"cpu": 2_802_000, "gpu": 848_000_000}


@pytest.mark.parametrize("err", [errno.EACCES, errno.EPERM, errno.EBUSY])
def test_failed_write_names_file_and_value_and_keeps_previous(board_at, err):
    vb, be = board_at("sd888_phone")
    be.apply(cpu_khz=1_305_600, gpu_hz=443_000_000)
    gmax = f"/{DEVFREQ}/3d00000.qcom,kgsl-3d0/max_freq"
    vb.kernel.inject_fault(gmax, err)
    with pytest.raises(SysfsIOError) as info:
        be.apply(cpu_khz=2_035_200, gpu_hz=676_000_000)  # up: the GPU max is written first, and fails
    msg = str(info.value)
    assert gmax in msg and "676000000" in msg and errno.errorcode[err] in msg
    assert "previous settings left in place" in msg
    # the CPU limits, written before the failure in the same batch, were rolled back
    pol = f"{CPUFREQ}/policy7"
    assert read(vb.root, f"{pol}/scaling_min_freq") == read(vb.root, f"{pol}/scaling_max_freq") == "1305600"
    assert read(vb.root, f"{DEVFREQ}/3d00000.qcom,kgsl-3d0/min_freq") == "443000000"
    vb.kernel.inject_fault(gmax, None)
    assert be.apply(cpu_khz=2_035_200, gpu_hz=676_000_000).effective == {"cpu": 2_035_200, "gpu": 676_000_000}


def test_read_only_attribute_is_eacces(board_at):
    vb, _ = board_at("rk3588")
    with pytest.raises(OSError) as info:
        vb.kernel.write(f"/{CPUFREQ}/policy4/scaling_cur_freq", "408000")
    assert info.value.errno == errno.EACCES


def test_governor_without_userspace_is_a_clear_config_error(tmp_path):
    board = load_board("sd888_phone").model_copy(deep=True)
    board.cpu.mechanism = "userspace"  # but this kernel's cpufreq lacks the userspace governor
    vb = VirtualBoard(tmp_path / "b", board)
    with pytest.raises(BackendError, match="lacks .*set mechanism: minmax"):
        vb.backend(state_file=tmp_path / "s.json").apply(cpu_khz=1_305_600)


def test_missing_policy_and_device_named_with_what_exists(tmp_path):
    board = load_board("rk3588")
    build_tree(tmp_path, board)
    # fresh copies: BoardConfig.domains is computed once per object (a copy carries it along)
    wrong = load_board("rk3588").model_copy(deep=True)
    wrong.cpu.policies["policy9"] = wrong.cpu.policies["policy4"]
    wrong.cpu.inference_policy = "policy9"
    with pytest.raises(BackendError, match="policy9.*found: policy0, policy4, policy6"):
        LinuxBackend(wrong, tmp_path, tmp_path / "s.json").discover()
    wrong = load_board("rk3588").model_copy(deep=True)
    wrong.gpu.node = "ff9a0000.gpu"
    with pytest.raises(BackendError, match="ff9a0000.gpu.*found: dmc, fb000000.gpu"):
        LinuxBackend(wrong, tmp_path, tmp_path / "s.json").discover()


def test_plain_tree_without_virtual_kernel_reports_os_errors(tmp_path):
    """The Linux backend on plain files (no kernel hook): real OS errors surface clearly."""
    board = load_board("rk3588")
    build_tree(tmp_path, board)
    target = tmp_path / CPUFREQ / "policy4" / "scaling_setspeed"
    target.unlink()
    target.mkdir()  # writing to a directory fails with EISDIR, like a broken attribute
    be = LinuxBackend(board, tmp_path, tmp_path / "s.json")
    with pytest.raises(SysfsIOError, match="scaling_setspeed.*EISDIR"):
        be.apply(cpu_khz=1_416_000)
    assert read(tmp_path, f"{CPUFREQ}/policy4/scaling_governor") == "schedutil"  # rolled back


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_on_plain_tree(tmp_path):
    board = load_board("rk3588")
    build_tree(tmp_path, board)
    (tmp_path / CPUFREQ / "policy4" / "scaling_governor").chmod(0o444)
    with pytest.raises(SysfsIOError, match="EACCES"):
        LinuxBackend(board, tmp_path, tmp_path / "s.json").apply(cpu_khz=1_416_000)


def test_save_writes_state_file_before_first_write_and_restore_removes_it(board_at, tmp_path):
    vb, be = board_at("sd888_phone")
    state = tmp_path / "sd888_phone.state.json"
    with restoring(be, handle_signals=False):
        be.apply(cpu_khz=960_000, gpu_hz=315_000_000)
        assert state.exists()
        assert '"min": 844800' in state.read_text()
    assert not state.exists()
    assert read(vb.root, f"{CPUFREQ}/policy7/scaling_min_freq") == "844800"
    assert read(vb.root, f"{CPUFREQ}/policy7/scaling_max_freq") == "2841600"


CHILD = textwrap.dedent("""
    import sys, time
    from dvfs_schema.loading import load_board
    from sysfs_backends.lifecycle import restoring
    from sysfs_backends.virtual.board import VirtualBoard
    vb = VirtualBoard(sys.argv[1], load_board("rk3588"))
    with restoring(vb.backend(state_file=sys.argv[2])) as be:
        be.apply(cpu_khz=600000, gpu_hz=300000000)
        print("applied", flush=True)
        time.sleep(60)
""")


def _start_child(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "b"), str(tmp_path / "s.json")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "applied"
    pol = tmp_path / "b" / CPUFREQ / "policy4"
    assert (pol / "scaling_governor").read_text().strip() == "userspace"
    return proc, pol


def test_sigterm_restores(tmp_path):
    proc, pol = _start_child(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert (pol / "scaling_governor").read_text().strip() == "schedutil"
    assert not (tmp_path / "s.json").exists()


def test_crash_then_restore_command_and_next_start(tmp_path):
    proc, pol = _start_child(tmp_path)
    proc.kill()
    proc.wait(timeout=20)
    assert (pol / "scaling_governor").read_text().strip() == "userspace"
    assert (tmp_path / "s.json").exists()
    # a new run must not save the crashed run's settings as "original"
    vb = VirtualBoard(tmp_path / "b")
    with pytest.raises(BackendError, match="dvfs-gov restore"):
        vb.backend(state_file=tmp_path / "s.json").save()
    out = subprocess.run(
        [sys.executable, "-m", "governor.cli", "restore", "--board", "rk3588",
         "--virtual-root", str(tmp_path / "b"), "--state-file", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "restored cpu: scaling_governor = schedutil" in out.stdout
    assert (pol / "scaling_governor").read_text().strip() == "schedutil"
    assert (tmp_path / "b" / DEVFREQ / "fb000000.gpu" / "governor").read_text().strip() == "simple_ondemand"
    assert not (tmp_path / "s.json").exists()
    # and the next start after another kill recovers by itself
    proc, pol = _start_child(tmp_path)
    proc.kill()
    proc.wait(timeout=20)
    with restoring(vb.backend(state_file=tmp_path / "s.json"), handle_signals=False) as be:
        assert be.state()["cpu"].governor == "schedutil"


def test_bad_board_yaml_names_file_key_and_allowed_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (Path(__file__).parents[1] / "configs/boards/rk3588.yaml").read_text()
    bad.write_text(text.replace("kind: mali", "kind: adreno"))
    with pytest.raises(ConfigError) as info:
        load_yaml_model(bad, BoardConfig)
    msg = str(info.value)
    assert str(bad) in msg and "key 'gpu.kind'" in msg and "'devfreq', 'kgsl' or 'mali'" in msg
    bad.write_text(text.replace("node: fb000000.gpu", "node: ../../../etc"))
    with pytest.raises(ConfigError, match="key 'gpu.node'"):
        load_yaml_model(bad, BoardConfig)
    bad.write_text(text.replace("mechanism: userspace", "mechanism: fast", 1))
    with pytest.raises(ConfigError, match="key 'cpu.mechanism'.*'userspace' or 'minmax'.*'fast'"):
        load_yaml_model(bad, BoardConfig)
    bad.write_text("cpu: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_model(bad, BoardConfig)


def test_status_cli_on_virtual_tree(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "governor.cli", "status", "--board", "sd888_phone",
         "--virtual-root", str(tmp_path / "v")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "gpu: kgsl 3d00000.qcom,kgsl-3d0" in out.stdout
    assert "governor schedutil (available: schedutil performance powersave)" in out.stdout


def test_third_party_backend_via_entry_point(tmp_path):
    pkg = tmp_path / "site"
    (pkg / "my_backend_pkg").mkdir(parents=True)
    (pkg / "my_backend_pkg" / "__init__.py").write_text(textwrap.dedent("""
        from sysfs_backends.virtual.board import VirtualBoard
        def make(board, spec):
            be = VirtualBoard(spec.virtual_root, board).backend(spec.state_file)
            be.name = "thirdparty"
            return be
    """))
    dist = pkg / "my_backend_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-backend-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[deadline_dvfs.backends]\nthirdparty = my_backend_pkg:make\n")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    out = subprocess.run(
        [sys.executable, "-m", "governor.cli", "status", "--board", "rk3588", "--backend",
         "thirdparty", "--virtual-root", str(tmp_path / "v")],
        capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "via thirdparty backend" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "governor.cli", "status", "--board", "rk3588", "--backend", "nope"],
        capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "allowed: linux, virtual, android, thirdparty" in out.stderr


def test_requests_above_a_thermal_cap_never_trip_the_kernel(board_at):
    """Under a cap the files show effective limits, not the requests the kernel checks writes
    against; ordering must still never leave min > max (regression)."""
    vb, be = board_at("pixel6_phone")
    be.apply(cpu_khz=2_704_000, gpu_hz=848_000_000)
    vb.kernel.force_thermal_cap(True)
    res = be.apply(cpu_khz=2_507_000, gpu_hz=762_000_000)  # below the old request, above the cap
    assert res.effective == {"cpu": 1_826_000, "gpu": 471_000_000}
    assert be.apply(cpu_khz=984_000, gpu_hz=251_000_000).effective == {"cpu": 984_000, "gpu": 251_000_000}
    be.apply(cpu_khz=2_802_000, gpu_hz=848_000_000)
    done = be.restore()  # still capped
    assert done
    vb.kernel.force_thermal_cap(False)
    pol = vb.root / CPUFREQ / "policy6"
    assert (pol / "scaling_min_freq").read_text().strip() == "500000"
    assert (pol / "scaling_max_freq").read_text().strip() == "2802000"


def test_a_load_following_boot_governor_keeps_the_boot_clock_and_the_switch_keeps_it(tmp_path):
    """A board booted under schedutil with its clock low (where a real one idles) shows that
    clock, not the maximum, and switching to userspace keeps it as the setpoint. The virtual
    kernel ran every load-following boot governor at the maximum and discarded the boot clock:
    the real-kernel comparison failed whenever the arm64 guest's load had left its clock at
    0.5 GHz, and passed when it was at the top."""
    cfg = load_board("rk3588").model_dump()
    pol = next(iter(cfg["cpu"]["policies"].values()))
    assert "schedutil" in pol["governors"]
    pol["default_governor"] = "schedutil"
    low = pol["frequencies_khz"][1]
    cfg["simulation"]["boot_cpu_khz"] = low
    board = BoardConfig.model_validate(cfg)
    vb = VirtualBoard(tmp_path / "vb", board)
    name = next(iter(board.cpu.policies))
    d = f"/sys/devices/system/cpu/cpufreq/{name}"
    assert int(vb.kernel.read(f"{d}/scaling_cur_freq")) == low
    vb.kernel.write(f"{d}/scaling_governor", "userspace")
    assert int(vb.kernel.read(f"{d}/scaling_cur_freq")) == low
    assert int(vb.kernel.read(f"{d}/scaling_setspeed")) == low
    # once the governor has changed, a load-following one runs the inference at the top again
    vb.kernel.write(f"{d}/scaling_governor", "schedutil")
    assert int(vb.kernel.read(f"{d}/scaling_cur_freq")) == pol["frequencies_khz"][-1]
