"""The arm64 guest recipe on the host, without booting: the device tree it builds (clocks, OPP
tables, the devfreq node), the module order, the arm64 root (interpreter, libraries, wheels of the
host's versions, launcher, mount points) and the initramfs busybox. The boot itself is exercised
by test_real_kernels.py."""

from __future__ import annotations

import gzip
import importlib.metadata
import re
import shutil
import struct
import subprocess

import pytest

from tests.kernel import arm64, harness

pytestmark = pytest.mark.kernel

EM_AARCH64 = 183


@pytest.fixture(scope="module")
def image():
    return arm64.prepare_arm64(harness.cache_dir())


def elf_machine(path) -> int:
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return struct.unpack_from("<H", data, 18)[0]


def node(dts: str, path_re: str) -> str:
    """The body of the first node whose name matches, subnodes included (decompiled dts: the
    closing brace has the opening line's indentation)."""
    m = re.search(r"^(\t*)" + path_re + r" \{\n(.*?)\n\1\};", dts, re.S | re.M)
    assert m, f"no node matching {path_re!r} in the device tree"
    return m.group(2)


def test_device_tree_declares_the_dvfs_hardware(image):
    dtb = image.machine_args[image.machine_args.index("-dtb") + 1]
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", dtb], capture_output=True, text=True,
                         check=True).stdout
    for cpu in ("cpu@0", "cpu@1"):
        body = node(dts, cpu)
        assert "clocks = " in body and "operating-points-v2 = " in body, f"{cpu} lacks a clock or OPP table"
    cpu_table = node(dts, "opp-table-cpu")
    assert "opp-shared;" in cpu_table, "both CPUs must share one policy"
    assert len(re.findall(r"opp-hz", cpu_table)) >= 4
    gpu = node(dts, arm64.GPU_NODE)
    assert 'compatible = "fsl,imx8m-nic"' in gpu and "clocks = " in gpu and "operating-points-v2" in gpu
    assert len(re.findall(r"opp-hz", node(dts, "opp-table-gpu"))) >= 3
    for mux in ("cpu-clk", "gpu-clk"):
        body = node(dts, mux)
        assert 'compatible = "gpio-mux-clock"' in body and "select-gpios" in body
        assert len(re.search(r"clocks = <([^;]*)>;", body).group(1).split()) == 2, f"{mux}: two parents"


def test_device_tree_needs_the_pl061():
    """A QEMU whose virt board had no PL061 would leave the muxes without select lines: refused."""
    with pytest.raises(harness.KernelTestError, match="pl061"):
        arm64.dts_additions("/ {\n\tcpus {\n\t\tcpu@0 {\n\t\t};\n\t};\n};\n")


def test_modules_load_in_dependency_order(image):
    names = [m.stem for m in image.modules]
    for dep, user in (("9pnet", "9pnet_virtio"), ("netfs", "fscache"), ("fscache", "9p"),
                      ("virtio_pci_modern_dev", "virtio_pci"), ("governor_userspace", "imx_bus"),
                      ("cpufreq_userspace", "cpufreq_dt")):
        assert names.index(dep) < names.index(user), f"{dep} must load before {user}: {names}"
    for ko in image.modules:
        assert elf_machine(ko) == EM_AARCH64, f"{ko} is not an arm64 module"


def test_root_runs_the_project(image):
    root = image.root
    assert elf_machine(root / "usr/bin/python3.11") == EM_AARCH64
    assert (root / image.python.lstrip("/")).exists()
    site = root / arm64.SITE_DIR.lstrip("/")
    for dist in arm64.WHEELS:
        version = importlib.metadata.version(dist)
        stem = re.sub(r"[-_.]+", "_", dist).lower()
        assert [p for p in site.glob("*.dist-info") if p.name.lower() == f"{stem}-{version}.dist-info"], \
            f"{dist}=={version} (the host's version) is not in the arm64 site directory"
    assert (root / "usr/local/bin/dvfs-gov").read_text().startswith(f"#!{image.python}\n")
    for share in image.shares:
        assert (root / share.guest_path.lstrip("/")).is_dir(), f"no mount point for {share.guest_path}"
    assert image.env["PYTHONPATH"].split(":")[0] == str(arm64.PROJECT_ROOT)
    assert list((root / "usr/lib/python3.11/__pycache__").glob("os.cpython-311.pyc")), "stdlib not precompiled"


def test_root_check_names_a_missing_library(image, tmp_path):
    """A root missing a library the interpreter needs is refused on the host, naming it, instead
    of failing inside the booted guest."""
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy2(image.root / "usr/bin/python3.11", tmp_path / "usr/bin/python3.11")
    shutil.copytree(image.root / "lib", tmp_path / "lib", symlinks=True)
    for lib in tmp_path.glob("lib/aarch64-linux-gnu/libz.so*"):
        lib.unlink()
    with pytest.raises(harness.KernelTestError, match=r"libz\.so\.1 \(for usr/bin/python3\.11\)"):
        arm64._check_libraries(tmp_path)


def test_initramfs_has_an_arm64_static_busybox(image, tmp_path):
    initrd = harness.build_initramfs(image, ["/bin/true"], tmp_path / "initrd.gz")
    out = tmp_path / "unpacked"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=gzip.decompress(initrd.read_bytes()), cwd=out, check=True)
    assert elf_machine(out / "bin/busybox") == EM_AARCH64
    assert harness.is_static_elf(out / "bin/busybox")
