"""The virtual board: a /sys-shaped tree, a small kernel that applies writes, and the simulator.

The tree is laid out exactly like a real board's (cpufreq policies, devfreq devices, kgsl, a memory
devfreq node or Jetson's BPMP EMC clock in debugfs), so the Linux backend drives it unchanged.
Writes reach the files through ``VirtualKernel.write``, which applies the kernel's rules: governors
must be available; ``scaling_setspeed`` and ``userspace/set_freq`` only work under ``userspace``
(the latter only exists then); limits resolve to supported frequencies (min up, max down) and are
clamped to the hardware range; a min above the max or a max below the min is refused with EINVAL;
read-only attributes refuse with EACCES; thermal capping lowers the effective max (visible in
``scaling_max_freq``/``max_freq``/``max_rate``, as with the kernel's frequency QoS). A BPMP clock
(``/sys/kernel/debug/bpmp/debug/clk/emc``) runs the firmware's own choice (its highest allowed
rate) until ``1`` is written to ``mrq_rate_locked``; a rate written to ``rate`` (rounded up to a
lockable rate, clamped to ``max_rate``) then holds, and writing ``0`` hands the clock back to the
firmware. Faults (EBUSY, EACCES, EPERM, ...) can be injected per file for tests.

Thermal cooling devices (``/sys/class/thermal/cooling_deviceN/{type,max_state,cur_state}``, one
per cpufreq policy, ``cpufreq-cpu<first CPU>``, and one per GPU devfreq device, ``devfreq-<node>``)
show the thermal cap as the kernel's cooling devices do: ``cur_state`` is how many frequencies from
the top of the domain's table the cap rules out (0: none). Read-only for users, as on a kernel.

All state lives in the tree (``.virtual/state.json``, guarded by an flock), so the governor daemon,
the apps and the demo driver, each in its own process, share one board.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvfs_schema.board import BoardConfig
from dvfs_schema.domains import AXIS_KEY
from dvfs_schema.domains import highest_at_most as _resolve_down
from dvfs_schema.domains import round_to_table as _resolve_up
from dvfs_schema.workload import ModelSpec
from sysfs_backends.linux import LinuxBackend
from sysfs_backends.sysfs import BPMP_CLK_DIR, CPUFREQ_DIR, DEVFREQ_DIR, KGSL_DIR, THERMAL_DIR
from sysfs_backends.virtual import power_files
from sysfs_backends.virtual.simulator import Simulator

STATE = ".virtual/state.json"
BOARD = ".virtual/board.json"
LOCK = ".virtual/lock"
AMBIENT_C = 35.0
THERMAL_TRIP_C = 80.0
THERMAL_CLEAR_C = 70.0
THERMAL_R_C_PER_W = 9.0  # steady-state rise per watt
THERMAL_TAU_S = 20.0


def _held_within(wanted: int, eff_min: int, eff_max: int, table: list[int]) -> int:
    """The table's frequency the kernel runs for ``wanted`` within the effective limits: the
    lowest at or above it, or the highest under the upper limit when that leaves none."""
    target = _resolve_up(min(max(wanted, eff_min), eff_max), table)
    return _resolve_down(eff_max, table) if target > eff_max else target


def _domain_state(kind: str, table: list[int], governors: list[str], governor: str, latency_ns: int,
                  unreachable: list[int], boot: int | None = None, name: str | None = None) -> dict:
    """A domain as the virtual kernel keeps it: the user's limit requests, the limits applied
    (cpufreq applies new requests later, from a work item), the governor's target and the clock."""
    dom = {"kind": kind, "table": table, "governors": governors, "governor": governor,
           "user_min": table[0], "user_max": table[-1], "applied": [table[0], table[-1]],
           "pending_ns": None, "setspeed": table[-1], "target": table[-1], "cur": table[-1],
           "unreachable": [f for f in unreachable if f in table], "latency_ns": latency_ns,
           "changed_ns": 0, "name": name or ("cpu" if kind == "cpufreq" else "gpu")}
    if boot is not None:
        dom["target"] = dom["setspeed"] = _resolve_up(boot, table)
        # a load-following boot governor keeps the clock the board booted at until the governor
        # changes (a real one idles where the load left it, often far below the maximum)
        dom["boot_hold"] = True
    dom["cur"] = VirtualKernel._clock(dom, dom["target"])
    return dom


def build_tree(root: str | Path, board: BoardConfig, cooling_devices: bool = True) -> Path:
    """Create the board's /sys tree under ``root`` in its default (boot) state; without
    ``cooling_devices`` (a kernel built without CPU/devfreq thermal cooling) no thermal cap shows
    beyond the limits."""
    root = Path(root)
    sim = board.simulation
    (root / ".virtual").mkdir(parents=True, exist_ok=True)
    domains = {}
    for name, pol in board.cpu.policies.items():
        d = f"{CPUFREQ_DIR}/{name}"
        freqs = pol.frequencies_khz
        ro = {
            "affected_cpus": " ".join(map(str, pol.cpus)),
            "related_cpus": " ".join(map(str, pol.cpus)),
            "cpuinfo_min_freq": freqs[0], "cpuinfo_max_freq": freqs[-1],
            "cpuinfo_transition_latency": pol.transition_latency_ns,
            "scaling_available_frequencies": " ".join(map(str, freqs)),
            "scaling_available_governors": " ".join(pol.governors),
            "scaling_driver": "virtual-cpufreq", "scaling_cur_freq": freqs[-1],
        }
        rw = {"scaling_governor": pol.default_governor, "scaling_min_freq": freqs[0],
              "scaling_max_freq": freqs[-1],
              "scaling_setspeed": freqs[-1] if pol.default_governor == "userspace" else "<unsupported>"}
        _write_files(root, d, ro, rw)
        if sim is None or sim.cpu_clock_readback:  # root-only, as on ARM boards
            _write_files(root, d, {}, {}, {"cpuinfo_cur_freq": freqs[-1]})
        for cpu in pol.cpus:
            link = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(f"../cpufreq/{name}")
        domains[d] = _domain_state("cpufreq", freqs, pol.governors, pol.default_governor,
                                   pol.transition_latency_ns, sim.unreachable_cpu_khz if sim else [],
                                   sim.boot_cpu_khz if sim else None)
        domains[d]["clock_readback"] = sim is None or sim.cpu_clock_readback
    gpu = board.gpu
    if gpu is not None:  # a board without a GPU has no devfreq device at all
        _build_devfreq(root, board.domain("gpu"), domains, sim.unreachable_gpu_hz if sim else [],
                       sim.boot_gpu_hz if sim else None)
    if board.memory is not None:
        mem = board.domain("mem")
        unreachable = getattr(sim, "unreachable_mem_hz", None) or []
        boot = getattr(sim, "boot_mem_hz", None)
        if mem.kind == "bpmp_emc":
            _build_bpmp(root, mem, domains, unreachable, boot)
        else:
            _build_devfreq(root, mem, domains, unreachable, boot)
    (root / BOARD).write_text(board.model_dump_json())
    options = {"limit_apply_delay_ns": sim.limit_apply_delay_ns if sim else 0,
               "legacy_limits": sim.legacy_limits if sim else False}
    state = {"domains": domains, "faults": {}, "options": options,
             "thermal": {"temp_c": AMBIENT_C, "capped": False, "forced": None},
             "background_load": 0.0}
    if cooling_devices:
        _build_cooling(root, board, domains)
    power_files.build(root, board, state)  # the board's power monitors, fed by run_frame
    (root / STATE).write_text(json.dumps(state))
    (root / LOCK).touch()
    kernel = VirtualKernel(root)
    with kernel._locked() as state:  # the files show what the kernel computes at boot
        for directory in state["domains"]:
            kernel._settle(state, directory)
    return root


def _build_devfreq(root: Path, spec, domains: dict, unreachable: list[int], boot: int | None) -> None:
    """A devfreq device: the GPU, or a memory/bus node (values in Hz, or a bus voter's MB/s)."""
    d = f"{DEVFREQ_DIR}/{spec.node}"
    freqs = list(spec.frequencies)
    ro = {"available_frequencies": " ".join(map(str, freqs)),
          "available_governors": " ".join(spec.governors), "cur_freq": freqs[-1],
          "target_freq": freqs[-1], "trans_stat": ""}
    rw = {"governor": spec.default_governor, "min_freq": freqs[0], "max_freq": freqs[-1],
          "polling_interval": 50}
    _write_files(root, d, ro, rw)
    if spec.default_governor == "userspace":  # the governor's directory exists only while selected
        _write_files(root, f"{d}/userspace", {}, {"set_freq": "undefined"})
    domains[d] = _domain_state("devfreq", freqs, list(spec.governors), spec.default_governor,
                               spec.transition_latency_ns, unreachable, boot, spec.name)
    domains[d]["setspeed"] = None  # devfreq's userspace governor has no request until one is written
    if spec.kind == "kgsl":
        _write_files(root, KGSL_DIR, {"gpuclk": freqs[-1], "max_gpuclk": freqs[-1],
                                      "gpu_available_frequencies": " ".join(map(str, freqs[::-1]))},
                     {})


def _build_bpmp(root: Path, spec, domains: dict, unreachable: list[int], boot: int | None) -> None:
    """Jetson's EMC through the BPMP debugfs clock interface; unlocked at boot (the firmware's
    DVFS picks the rate). debugfs files are root-only on a real board; here the tree's user's."""
    d = f"{BPMP_CLK_DIR}/{spec.node}"
    freqs = list(spec.frequencies)
    _write_files(root, d, {"min_rate": freqs[0], "max_rate": freqs[-1], "parent": "pllm"},
                 {"rate": freqs[-1], "mrq_rate_locked": 0})
    domains[d] = _domain_state("bpmp_emc", freqs, ["bpmp", "locked"], "bpmp", spec.transition_latency_ns,
                               unreachable, boot, spec.name)
    domains[d]["setspeed"] = None  # no rate asked from Linux yet


def _build_cooling(root: Path, board: BoardConfig, domains: dict) -> None:
    """One cooling device per cpufreq policy and for the GPU's devfreq device (cpufreq_cooling /
    devfreq_cooling register theirs so): state 0 at boot, ``max_state`` the table's length less
    one. The domain remembers its device; ``_settle`` keeps ``cur_state`` on the cap in force."""
    named = [(f"cpufreq-cpu{pol.cpus[0]}", f"{CPUFREQ_DIR}/{name}") for name, pol in board.cpu.policies.items()]
    if board.gpu is not None:
        named.append((f"devfreq-{board.gpu.node}", f"{DEVFREQ_DIR}/{board.gpu.node}"))
    for n, (kind, d) in enumerate(named):
        cdev = f"{THERMAL_DIR}/cooling_device{n}"
        _write_files(root, cdev, {"type": kind, "max_state": len(domains[d]["table"]) - 1, "cur_state": 0}, {})
        domains[d]["cooling"] = cdev


def _write_files(root: Path, d: str, ro: dict, rw: dict, root_only: dict | None = None) -> None:
    base = root / d.lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    for mode, files in ((0o444, ro), (0o644, rw), (0o400, root_only or {})):
        for name, value in files.items():
            _atomic_write(base / name, f"{value}\n", mode)


@dataclass(frozen=True)
class FrameResult:
    latency_ns: float
    energy_j: float
    cpu_khz: int
    gpu_hz: int | None  # None on a board without a GPU
    host_busy_ns: float
    gpu_busy_ns: float
    transition_ns: float
    background_load: float = 0.0
    capped: bool = False
    mem_hz: int | None = None  # the memory clock in force (its unit); None on a board without one


class VirtualKernel:
    """Applies sysfs writes under ``root`` with the kernel's rules (see the module docstring).

    Reads go through ``read`` too, as a real attribute's ``show`` does: that is where pending
    asynchronous work (cpufreq limit updates) lands once its time has come, so a reader that looks
    too early sees the previous values exactly as on a real kernel."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / STATE).exists():
            raise FileNotFoundError(f"{self.root}: not a virtual board tree (no {STATE})")
        self._board: BoardConfig | None = None  # fixed for the life of a tree: parse once
        self._lock_path = str(self.root / LOCK)
        self._state_path = str(self.root / STATE)
        self._real_root = os.path.realpath(self.root)  # where a path inside the tree resolves from
        # the state's version last parsed on the read path (``_land_due_work``), and when the
        # asynchronous work it holds falls due (None: none pending)
        self._seen_version = b""
        self._due_ns: int | None = None

    @contextmanager
    def _locked(self):
        with open(self._lock_path, "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self._state_path, "rb") as f:
                    state = json.loads(f.read())
                self._catch_up(state, time.monotonic_ns())
                yield state
                _atomic_write(self._state_path, json.dumps(state))
                # a new version of the state, for every process of the board (the lock file's
                # first bytes, read under the same lock): readers parse the state again only then
                os.pwrite(lock.fileno(), os.urandom(8), 0)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read_state(self) -> dict:
        with open(self.root / LOCK, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            try:
                return json.loads((self.root / STATE).read_text())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def board(self) -> BoardConfig:
        if self._board is None:
            self._board = BoardConfig.model_validate_json((self.root / BOARD).read_text())
        return self._board

    # ---- the sysfs read path ----------------------------------------------------------
    def catch_up(self) -> dict:
        """Land the asynchronous work that is due (rewriting the files it changes); the state."""
        self._land_due_work()
        return self.read_state()

    def _land_due_work(self) -> None:
        """Land the asynchronous work that is due. It runs for every attribute read (a settled
        read-back is a dozen of them): the state is parsed again only when its version changed,
        else it costs an flock and an 8-byte read (~4 ms per write of the SD888's three domains
        under the daemon came to half that)."""
        fd = os.open(self._lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            version = os.pread(fd, 8, 0)
            if not version or version != self._seen_version:  # never versioned, or changed
                with open(self._state_path, "rb") as f:
                    domains = json.loads(f.read())["domains"].values()
                pending = [d["pending_ns"] for d in domains if d.get("pending_ns") is not None]
                self._due_ns = min(pending) if pending else None
                self._seen_version = version
        finally:
            os.close(fd)  # lets the lock go
        if self._due_ns is not None and self._due_ns <= time.monotonic_ns():
            with self._locked():
                pass

    def read(self, path: str) -> str:
        """What reading ``path`` returns now (after any asynchronous work that is due)."""
        self._land_due_work()  # injected faults are for writes: reads always answer, as sysfs does
        fd = os.open(os.path.join(self.root, path.lstrip("/")), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return os.read(fd, 65536).decode()
        finally:
            os.close(fd)

    # ---- the sysfs write path ---------------------------------------------------------
    def write(self, path: str, value: str) -> None:
        with self._locked() as state:
            if path in state["faults"]:
                raise OSError(state["faults"][path], os.strerror(state["faults"][path]), path)
            local = os.path.join(self.root, path.lstrip("/"))
            if os.path.realpath(local) != os.path.join(self._real_root, path.lstrip("/")):
                # a symlink on the way: the real kernel's files are never links to follow out
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            try:
                mode = os.stat(local).st_mode
            except FileNotFoundError:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
            if not mode & 0o200:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
            directory, attr = path.rsplit("/", 1)
            if attr == "set_freq" and directory.endswith("/userspace"):
                directory, attr = directory.rsplit("/", 1)[0], "userspace/set_freq"
            dom = state["domains"].get(directory)
            if dom is None:  # a writable file we do not model: accept the bytes
                _atomic_write(local, value.strip() + "\n")
                return
            self._apply_write(state, directory, dom, attr, value.strip())
            self._settle(state, directory)

    @staticmethod
    def _number(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise OSError(errno.EINVAL, "Invalid argument") from None
        if not 0 <= number < 2**32:  # the kernel parses an unsigned int
            raise OSError(errno.EINVAL, "Invalid argument")
        return number

    def _apply_write(self, state: dict, directory: str, dom: dict, attr: str, value: str) -> None:
        table = dom["table"]
        cpufreq = dom["kind"] == "cpufreq"
        legacy = state["options"]["legacy_limits"]
        einval = OSError(errno.EINVAL, "Invalid argument")
        if attr in ("scaling_governor", "governor"):
            if value not in dom["governors"]:
                raise einval
            if value == dom["governor"]:  # the same governor again: the kernel changes nothing
                return
            dom["governor"] = value
            dom.pop("boot_hold", None)
            if value == "userspace":
                # cpufreq's userspace governor starts from the frequency in force; devfreq's has no
                # request until one is written (set_freq reads "undefined") and keeps the frequency
                dom["setspeed"] = dom["target"] if cpufreq else None
            if not cpufreq:
                ud = self.root / directory.lstrip("/") / "userspace"
                if value == "userspace":
                    ud.mkdir(exist_ok=True)
                    _atomic_write(ud / "set_freq", "undefined\n", 0o644)
                elif ud.exists():
                    (ud / "set_freq").unlink(missing_ok=True)
                    ud.rmdir()
        elif attr in ("scaling_setspeed", "userspace/set_freq"):
            if dom["governor"] != "userspace":
                raise einval
            dom["setspeed"] = self._number(value)
        elif dom["kind"] == "bpmp_emc" and attr == "mrq_rate_locked":
            if value not in ("0", "1"):
                raise einval
            dom["governor"] = "locked" if value == "1" else "bpmp"
        elif dom["kind"] == "bpmp_emc" and attr == "rate":
            # the request is kept while unlocked too; it holds only once the rate is locked
            dom["setspeed"] = self._number(value)
        elif attr in ("scaling_min_freq", "min_freq", "scaling_max_freq", "max_freq"):
            v = self._number(value)
            is_min = "min" in attr
            if legacy:
                # kernels before 5.4 (cpufreq) / 5.5 (devfreq): resolve at once, refuse a crossing
                v = min(max(v, table[0]), table[-1])
                v = _resolve_up(v, table) if is_min else _resolve_down(v, table)
                if (is_min and v > dom["user_max"]) or (not is_min and v < dom["user_min"]):
                    raise einval
            dom["user_min" if is_min else "user_max"] = v
            if cpufreq and not legacy:
                # a frequency QoS request: the policy update runs later, from a work item
                dom["pending_ns"] = time.monotonic_ns() + state["options"]["limit_apply_delay_ns"]
            else:
                dom["applied"] = [dom["user_min"], dom["user_max"]]
        else:
            raise OSError(errno.EACCES, "Permission denied")

    def _catch_up(self, state: dict, now_ns: int) -> None:
        """Run the asynchronous limit updates whose time has come."""
        for directory, dom in state["domains"].items():
            pending = dom.get("pending_ns")
            if pending is not None and pending <= now_ns:
                dom["pending_ns"] = None
                dom["applied"] = [dom["user_min"], dom["user_max"]]
                self._settle(state, directory)

    def _effective_limits(self, state: dict, dom: dict) -> tuple[int, int]:
        """The limits in force from the applied requests and the thermal cap.

        cpufreq (cpufreq_set_policy): the max request wins over the min one, then, if no OPP lies
        between them, the max moves up to the next OPP; min resolves up and max down to OPPs.
        devfreq (devfreq_get_freq_range): the requests as given, min clamped to max, not rounded."""
        table = dom["table"]
        req_min, req_max = dom["applied"]
        cap = self._thermal_cap(state, dom)
        hi = min(max(min(req_max, cap), table[0]), table[-1])
        lo = min(max(req_min, table[0]), hi)
        if dom["kind"] != "cpufreq":
            return lo, hi
        if not any(lo <= f <= hi for f in table):
            hi = _resolve_up(hi, table)
        return _resolve_up(lo, table), _resolve_down(hi, table)

    @staticmethod
    def _clock(dom: dict, target: int) -> int:
        """The rate the clock really runs for ``target``: an OPP its parents cannot produce
        leaves it at the highest reachable rate below (a mux rounds down), else the lowest."""
        unreachable = set(dom.get("unreachable", []))
        if target not in unreachable:
            return target
        reachable = [f for f in dom["table"] if f not in unreachable]
        below = [f for f in reachable if f <= target]
        return below[-1] if below else reachable[0]

    def _settle(self, state: dict, directory: str) -> None:
        """Recompute a domain's effective limits and frequency and write them to its files."""
        dom = state["domains"][directory]
        table = dom["table"]
        eff_min, eff_max = self._effective_limits(state, dom)
        gov = dom["governor"]
        if gov in ("userspace", "locked"):
            wanted = dom["target"] if dom["setspeed"] is None else dom["setspeed"]
            target = _held_within(wanted, eff_min, eff_max, table)
        elif gov == "powersave":
            target = _resolve_up(eff_min, table)
        elif gov != "performance" and dom.get("boot_hold"):  # the boot clock, within the limits
            target = _held_within(dom["target"], eff_min, eff_max, table)
        else:  # performance, and load-following governors under a running inference
            target = _resolve_down(eff_max, table)
        cur = self._clock(dom, target)
        if cur != dom["cur"]:
            dom["changed_ns"] = time.monotonic_ns()
        dom["cur"], dom["target"] = cur, target
        base = self.root / directory.lstrip("/")
        if dom["kind"] == "bpmp_emc":
            files = {"rate": cur, "min_rate": eff_min, "max_rate": eff_max,
                     "mrq_rate_locked": 1 if gov == "locked" else 0}
        elif dom["kind"] == "cpufreq":
            files = {"scaling_governor": gov, "scaling_min_freq": eff_min, "scaling_max_freq": eff_max,
                     "scaling_cur_freq": target, "cpuinfo_cur_freq": cur,
                     "scaling_setspeed": target if gov == "userspace" else "<unsupported>"}
            if not dom.get("clock_readback", True):
                del files["cpuinfo_cur_freq"]
        else:
            files = {"governor": gov, "min_freq": eff_min, "max_freq": eff_max, "cur_freq": cur,
                     "target_freq": target}
            if gov == "userspace":
                files["userspace/set_freq"] = "undefined" if dom["setspeed"] is None else dom["setspeed"]
            kgsl = self.root / KGSL_DIR.lstrip("/")
            if dom.get("name", "gpu") == "gpu" and kgsl.exists():  # kgsl shows the GPU's clock only
                _force_write(kgsl / "gpuclk", cur)
        for name, value in files.items():
            if dom.get("shown", {}).get(name) != value:
                _force_write(base / name, value)
        dom["shown"] = files
        if dom.get("cooling"):  # the cooling device's state: frequencies ruled out from the top
            level = len(table) - 1 - table.index(self._thermal_cap(state, dom))
            if dom.get("cooling_shown") != level:
                _force_write(self.root / dom["cooling"].lstrip("/") / "cur_state", level)
                dom["cooling_shown"] = level

    def _thermal_cap(self, state: dict, dom: dict) -> int:
        if not state["thermal"]["capped"]:
            return dom["table"][-1]
        sim = self.board.simulation
        name = dom.get("name") or ("cpu" if dom["kind"] == "cpufreq" else "gpu")
        cap = getattr(sim, f"thermal_cap_{AXIS_KEY[name]}", None) if sim is not None else None
        return _resolve_down(cap, dom["table"]) if cap else dom["table"][-1]

    def thermal_cap_of(self, directory: str) -> int | None:
        """The thermal cap in force on the domain at ``directory`` now, or None (not capped, or not
        a domain): what an observer (the FUSE store log) judges a store against."""
        state = self.read_state()
        dom = state["domains"].get(directory)
        if dom is None or not state["thermal"]["capped"]:
            return None
        return self._thermal_cap(state, dom)

    # ---- knobs for tests and the demo ----------------------------------------------------
    def inject_fault(self, path: str, err: int | None) -> None:
        with self._locked() as state:
            if err is None:
                state["faults"].pop(path, None)
            else:
                state["faults"][path] = err

    def force_thermal_cap(self, capped: bool | None) -> None:
        """True/False pins the thermal state; None hands it back to the temperature model."""
        with self._locked() as state:
            state["thermal"]["forced"] = capped
            self._update_thermal(state, 0.0, 0.0)

    def set_limit_apply_delay_ns(self, delay_ns: int) -> None:
        """How late cpufreq takes new limits up (see ``Simulation.limit_apply_delay_ns``)."""
        with self._locked() as state:
            state["options"]["limit_apply_delay_ns"] = int(delay_ns)

    def set_background_load(self, load: float) -> None:
        with self._locked() as state:
            state["background_load"] = float(load)

    def _update_thermal(self, state: dict, power_w: float, dt_s: float) -> None:
        th = state["thermal"]
        th["temp_c"] += (AMBIENT_C + power_w * THERMAL_R_C_PER_W - th["temp_c"]) * min(
            dt_s / THERMAL_TAU_S, 1.0)
        before = th["capped"]
        if th["forced"] is not None:
            th["capped"] = bool(th["forced"])
        elif th["temp_c"] >= THERMAL_TRIP_C:
            th["capped"] = True
        elif th["temp_c"] <= THERMAL_CLEAR_C:
            th["capped"] = False
        if th["capped"] != before:
            for directory in state["domains"]:
                self._settle(state, directory)

    # ---- running a frame -----------------------------------------------------------------
    def frame_domains(self) -> tuple[str, str | None, str | None]:
        """The state keys of the domains an inference runs on: the inference CPU policy, the GPU
        and the memory clock (None where the board has none)."""
        board = self.board
        return (f"{CPUFREQ_DIR}/{board.cpu.inference_policy}",
                f"{DEVFREQ_DIR}/{board.gpu.node}" if board.gpu is not None else None,
                _domain_dir(board.domain("mem")) if board.memory is not None else None)

    def run_frame(
        self,
        sim: Simulator,
        context_len: int | None = None,
        rng: np.random.Generator | None = None,
        period_s: float | None = None,
    ) -> FrameResult:
        """One inference at the frequencies in force now; energy from the board's OPP tables.
        The frame runs wholly at that point and queues behind no other frame: for frames that
        overlap (several apps, changes landing mid-frame) see ``running_frame.RunningFrame``.

        A frequency change still in its transition latency delays the frame by what remains.
        ``period_s`` (the frame period) feeds the temperature model with the average power.
        """
        with self._locked() as state:
            board = self.board
            cpu_dir, gpu_dir, mem_dir = self.frame_domains()
            now = time.monotonic_ns()
            transition = 0.0
            for d in (cpu_dir, gpu_dir, mem_dir):
                if d is not None:
                    dom = state["domains"][d]
                    transition = max(transition, dom["changed_ns"] + dom["latency_ns"] - now)
            transition = max(transition, 0.0)
            cpu = state["domains"][cpu_dir]["cur"]
            gpu = state["domains"][gpu_dir]["cur"] if gpu_dir else None
            mem = state["domains"][mem_dir]["cur"] if mem_dir else None
            load = state["background_load"]
            capped = state["thermal"]["capped"]
            res = sim.run(cpu, gpu, context_len, rng, host_slowdown=1.0 + load, mem_hz=mem)
            latency = float(res.latency_ns[0]) + transition
            energy = float(board.frame_energy_j(cpu, gpu, res.host_busy_ns[0], res.gpu_busy_ns[0], latency,
                                                mem_hz=mem))
            power_files.account_frame(self.root, state, board, cpu, gpu, res.host_busy_ns[0], res.gpu_busy_ns[0],
                                      latency, mem_hz=mem)
            dt = max(period_s or 0.0, latency * 1e-9)
            self._update_thermal(state, energy / dt if dt > 0 else 0.0, dt)
        return FrameResult(latency, energy, cpu, gpu, float(res.host_busy_ns[0]),
                           float(res.gpu_busy_ns[0]), transition, load, capped, mem)


def _domain_dir(spec) -> str:
    """Where the virtual kernel keeps a (non-CPU) domain: its devfreq or BPMP clock directory."""
    return f"{BPMP_CLK_DIR}/{spec.node}" if spec.kind == "bpmp_emc" else f"{DEVFREQ_DIR}/{spec.node}"


def _force_write(path: Path, value) -> None:
    """Kernel-side update of an attribute file, whatever its mode."""
    mode = 0o644
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    else:
        if stat.S_ISLNK(st.st_mode):  # planted: the kernel's own file replaces it, its target is not touched
            os.unlink(path)
        else:
            mode = st.st_mode & 0o777
    _atomic_write(path, f"{value}\n", mode)


def _atomic_write(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` whole: a SIGKILL at any moment leaves the old or the new content, never an
    empty or half-written attribute (readers open the path afresh each time, as with sysfs)."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class VirtualBoard:
    """A virtual board at ``root``: its tree, its kernel, and a Linux backend that drives it."""

    def __init__(self, root: str | Path, board: BoardConfig | None = None) -> None:
        self.root = Path(root)
        if board is not None and not (self.root / STATE).exists():
            build_tree(self.root, board)
        self.kernel = VirtualKernel(self.root)
        self.board = self.kernel.board

    def backend(self, state_file: str | Path | None = None) -> LinuxBackend:
        backend = LinuxBackend(self.board, self.root, state_file=state_file, hook=self.kernel)
        backend.name = "virtual"
        return backend

    def simulator(self, model: ModelSpec) -> Simulator:
        return Simulator(self.board, model)
