"""The real-kernel harness itself, on the host: what it does when the registry is out of reach,
and the pieces of a guest it builds (module order, SSDT, initramfs)."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from tests.kernel import harness
from tests.kernel.x86_64 import prepare_x86_64, ssdt_source

pytestmark = pytest.mark.kernel


def test_unreachable_registry_fails_with_a_message(tmp_path, monkeypatch):
    """No cached kernel and a registry that cannot be reached: an error that says so (the tests
    built on it then fail; they are never skipped). apt runs with private, empty lists and a
    proxy nobody listens on, so the host's package state is not touched."""
    lists, cache = tmp_path / "lists", tmp_path / "apt-cache"
    (lists / "partial").mkdir(parents=True)
    (cache / "archives" / "partial").mkdir(parents=True)
    conf = tmp_path / "apt.conf"
    conf.write_text(f'Dir::State::Lists "{lists}";\nDir::Cache "{cache}";\nAcquire::http::Proxy "http://127.0.0.1:9";\n'
                    'Acquire::https::Proxy "http://127.0.0.1:9";\nAcquire::Retries "0";\n'
                    'APT::Sandbox::User "root";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    monkeypatch.setattr(harness, "_apt_updated", False)
    with pytest.raises(harness.KernelTestError, match="registry"):
        harness.fetch_kernel("linux-image-amd64", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("linux-image-*")), "nothing half-fetched may be left as a kernel"


def test_guest_pieces(tmp_path):
    """Modules come with their dependencies first; the SSDT compiles; the initramfs holds a static
    busybox, our init and the modules in load order."""
    image = prepare_x86_64(harness.cache_dir())
    names = [m.stem for m in image.modules]
    for dep, user in (("virtio", "virtio_pci"), ("9pnet", "9pnet_virtio"), ("9pnet_virtio", "9p"),
                      ("netfs", "9p")):
        assert names.index(dep) < names.index(user), f"{dep} must load before {user}: {names}"
    assert names[-5:] == ["acpi_cpufreq", "cpufreq_userspace", "cpufreq_powersave", "cpufreq_ondemand",
                          "cpufreq_conservative"]
    assert "Name (_PSD" in ssdt_source() and "0x8B" in ssdt_source()
    initrd = harness.build_initramfs(image, ["/bin/true"], tmp_path / "initrd.gz")
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(initrd.read_bytes()),
                             capture_output=True, check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "cmd.sh", "modules.list"} <= set(listing)
    loaded = [n for n in listing if n.startswith("modules/")]
    assert [n.split("-", 1)[1] for n in sorted(loaded)] == [m.name for m in image.modules]


def test_write_sequence_counts_the_kernels_clock_changes():
    """The sequence tells whether a dynamic governor moved the clock between its first snapshot and
    its first write from the kernel's own counters, in the layouts the kernel prints them: cpufreq's
    stats/total_trans, devfreq's trans_stat table ending in its total (drivers/devfreq/devfreq.c);
    None where the kernel keeps no count."""
    from tests.kernel.write_sequence import _transitions

    trans_stat = ("     From  :   To\n"
                  "           : 100000000 200000000   time(ms)\n"
                  "* 100000000:         0         3        120\n"
                  "  200000000:         4         0        480\n"
                  "Total transition : 7\n")
    files = {"/c/stats/total_trans": "49\n", "/g/trans_stat": trans_stat}

    def read(path):
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    assert _transitions(read, "/c", True) == 49
    assert _transitions(read, "/g", False) == 7
    assert _transitions(read, "/none", True) is None
    assert _transitions(read, "/none", False) is None


def test_the_comparison_takes_either_state_of_cpufreqs_resync_and_nothing_else():
    """Under the userspace governor scaling_setspeed shows policy->cur, which the core puts back
    to the hardware's clock when a read of cpuinfo_cur_freq finds them apart: a real kernel may
    settle at the request (shown at once) or at the clock. CI's arm64 guest did the latter once
    (setspeed 1000001: 1500000 at once, 500000 settled, its clock at 500000): the virtual kernel's
    1500000 is that record's other state. Any other value, another attribute, or a record the real
    kernel settled at the request still count as differences."""
    from tests.kernel.write_sequence import differences

    shown = {"scaling_governor": "userspace", "scaling_cur_freq": "1500000", "cpuinfo_cur_freq": "500000"}
    real = [{"kind": "cpufreq", "attr": "scaling_setspeed", "value": "1000001", "errno": 0,
             "at_once": {**shown, "scaling_setspeed": "1500000"},
             "settled": {**shown, "scaling_setspeed": "500000"}}]

    def virtual(**settled):
        return [{"errno": 0, "settled": {**shown, "scaling_setspeed": "1500000", **settled}}]

    assert differences(real, virtual()) == []
    assert differences(real, virtual(scaling_setspeed="1000000"))  # neither state
    assert differences(real, virtual(scaling_cur_freq="500000"))  # another attribute
    at_request = [{**real[0], "settled": {**shown, "scaling_setspeed": "1500000"}}]
    assert differences(at_request, virtual(scaling_setspeed="500000"))  # the real one did not resync
