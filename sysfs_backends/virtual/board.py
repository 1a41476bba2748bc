"""The virtual board: a /sys-shaped tree, a small kernel that applies writes, and the simulator.

The tree is laid out exactly like a real board's (cpufreq policies, devfreq devices, kgsl), so the
Linux backend drives it unchanged. Writes reach the files through ``VirtualKernel.write``, which
applies the kernel's rules: governors must be available; ``scaling_setspeed`` and
``userspace/set_freq`` only work under ``userspace`` (the latter only exists then); limits resolve
to supported frequencies (min up, max down) and are clamped to the hardware range; a min above the
max or a max below the min is refused with EINVAL; read-only attributes refuse with EACCES; thermal
capping lowers the effective max (visible in ``scaling_max_freq``/``max_freq``, as with the
kernel's frequency QoS). Faults (EBUSY, EACCES, EPERM, ...) can be injected per file for tests.

All state lives in the tree (``.virtual/state.json``, guarded by an flock), so the governor daemon,
the apps and the demo driver, each in its own process, share one board.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from estimator.workload import ModelSpec
from sysfs_backends.board import BoardConfig
from sysfs_backends.linux import LinuxBackend
from sysfs_backends.sysfs import CPUFREQ_DIR, DEVFREQ_DIR, KGSL_DIR
from sysfs_backends.virtual.simulator import Simulator

STATE = ".virtual/state.json"
BOARD = ".virtual/board.json"
LOCK = ".virtual/lock"
AMBIENT_C = 35.0
THERMAL_TRIP_C = 80.0
THERMAL_CLEAR_C = 70.0
THERMAL_R_C_PER_W = 9.0  # steady-state rise per watt
THERMAL_TAU_S = 20.0


def _resolve_up(value: int, table: list[int]) -> int:
    i = bisect.bisect_left(table, value)
    return table[min(i, len(table) - 1)]


def _resolve_down(value: int, table: list[int]) -> int:
    i = bisect.bisect_right(table, value)
    return table[max(i - 1, 0)]


def build_tree(root: str | Path, board: BoardConfig) -> Path:
    """Create the board's /sys tree under ``root`` in its default (boot) state."""
    root = Path(root)
    if board.gpu is None:
        raise ValueError(f"board {board.name!r} has no GPU: not a virtual board")
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
              "scaling_max_freq": freqs[-1], "scaling_setspeed": "<unsupported>"}
        _write_files(root, d, ro, rw)
        for cpu in pol.cpus:
            link = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(f"../cpufreq/{name}")
        domains[d] = {"kind": "cpufreq", "table": freqs, "governors": pol.governors,
                      "governor": pol.default_governor, "user_min": freqs[0], "user_max": freqs[-1],
                      "setspeed": freqs[-1], "cur": freqs[-1],
                      "latency_ns": pol.transition_latency_ns, "changed_ns": 0}
    gpu = board.gpu
    d = f"{DEVFREQ_DIR}/{gpu.node}"
    freqs = gpu.frequencies_hz
    ro = {"available_frequencies": " ".join(map(str, freqs)),
          "available_governors": " ".join(gpu.governors), "cur_freq": freqs[-1],
          "target_freq": freqs[-1], "trans_stat": ""}
    rw = {"governor": gpu.default_governor, "min_freq": freqs[0], "max_freq": freqs[-1],
          "polling_interval": 50}
    _write_files(root, d, ro, rw)
    domains[d] = {"kind": "devfreq", "table": freqs, "governors": gpu.governors,
                  "governor": gpu.default_governor, "user_min": freqs[0], "user_max": freqs[-1],
                  "setspeed": freqs[-1], "cur": freqs[-1], "latency_ns": gpu.transition_latency_ns,
                  "changed_ns": 0}
    if gpu.kind == "kgsl":
        _write_files(root, KGSL_DIR, {"gpuclk": freqs[-1], "max_gpuclk": freqs[-1],
                                      "gpu_available_frequencies": " ".join(map(str, freqs[::-1]))},
                     {})
    (root / BOARD).write_text(board.model_dump_json())
    state = {"domains": domains, "faults": {},
             "thermal": {"temp_c": AMBIENT_C, "capped": False, "forced": None},
             "background_load": 0.0}
    (root / STATE).write_text(json.dumps(state))
    (root / LOCK).touch()
    return root


def _write_files(root: Path, d: str, ro: dict, rw: dict) -> None:
    base = root / d.lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    for mode, files in ((0o444, ro), (0o644, rw)):
        for name, value in files.items():
            p = base / name
            if p.exists():
                p.chmod(0o644)
            p.write_text(f"{value}\n")
            p.chmod(mode)


@dataclass(frozen=True)
class FrameResult:
    latency_ns: float
    energy_j: float
    cpu_khz: int
    gpu_hz: int
    host_busy_ns: float
    gpu_busy_ns: float
    transition_ns: float
    background_load: float = 0.0
    capped: bool = False


class VirtualKernel:
    """Applies sysfs writes under ``root`` with the kernel's rules (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / STATE).exists():
            raise FileNotFoundError(f"{self.root}: not a virtual board tree (no {STATE})")
        self._board: BoardConfig | None = None  # fixed for the life of a tree: parse once

    @contextmanager
    def _locked(self):
        with open(self.root / LOCK, "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads((self.root / STATE).read_text())
                yield state
                tmp = self.root / (STATE + ".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self.root / STATE)
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

    # ---- the sysfs write path ---------------------------------------------------------
    def write(self, path: str, value: str) -> None:
        with self._locked() as state:
            if path in state["faults"]:
                raise OSError(state["faults"][path], os.strerror(state["faults"][path]), path)
            local = self.root / path.lstrip("/")
            if os.path.realpath(local) != os.path.join(os.path.realpath(self.root), path.lstrip("/")):
                # a symlink on the way: the real kernel's files are never links to follow out
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            if not local.exists():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if not local.stat().st_mode & 0o200:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
            directory, attr = path.rsplit("/", 1)
            if attr == "set_freq" and directory.endswith("/userspace"):
                directory, attr = directory.rsplit("/", 1)[0], "userspace/set_freq"
            dom = state["domains"].get(directory)
            if dom is None:  # a writable file we do not model: accept the bytes
                local.write_text(value.strip() + "\n")
                return
            self._apply_write(state, directory, dom, attr, value.strip())
            self._settle(state, directory)

    @staticmethod
    def _number(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise OSError(errno.EINVAL, "Invalid argument") from None

    def _apply_write(self, state: dict, directory: str, dom: dict, attr: str, value: str) -> None:
        table = dom["table"]
        cpufreq = dom["kind"] == "cpufreq"
        einval = OSError(errno.EINVAL, "Invalid argument")
        if attr in ("scaling_governor", "governor"):
            if value not in dom["governors"]:
                raise einval
            dom["governor"] = value
            if not cpufreq:
                ud = self.root / directory.lstrip("/") / "userspace"
                if value == "userspace":
                    ud.mkdir(exist_ok=True)
                    (ud / "set_freq").write_text(f"{dom['cur']}\n")
                    dom["setspeed"] = dom["cur"]
                elif ud.exists():
                    (ud / "set_freq").unlink(missing_ok=True)
                    ud.rmdir()
            elif value == "userspace":
                dom["setspeed"] = dom["cur"]
        elif attr in ("scaling_setspeed", "userspace/set_freq"):
            if dom["governor"] != "userspace":
                raise einval
            dom["setspeed"] = self._number(value)
        elif attr in ("scaling_min_freq", "min_freq"):
            v = min(max(self._number(value), table[0]), table[-1])
            v = _resolve_up(v, table)
            if v > dom["user_max"]:
                raise einval
            dom["user_min"] = v
        elif attr in ("scaling_max_freq", "max_freq"):
            v = min(max(self._number(value), table[0]), table[-1])
            v = _resolve_down(v, table)
            if v < dom["user_min"]:
                raise einval
            dom["user_max"] = v
        else:
            raise OSError(errno.EACCES, "Permission denied")

    def _settle(self, state: dict, directory: str) -> None:
        """Recompute a domain's effective limits and frequency and write them to its files."""
        dom = state["domains"][directory]
        table = dom["table"]
        cap = self._thermal_cap(state, dom)
        eff_max = min(dom["user_max"], cap)
        eff_min = min(dom["user_min"], eff_max)
        gov = dom["governor"]
        if gov == "userspace":
            cur = _resolve_up(min(max(dom["setspeed"], eff_min), eff_max), table)
            cur = min(cur, eff_max)
        elif gov == "powersave":
            cur = eff_min
        else:  # performance, and load-following governors under a running inference
            cur = eff_max
        if cur != dom["cur"]:
            dom["changed_ns"] = time.monotonic_ns()
        dom["cur"] = cur
        base = self.root / directory.lstrip("/")
        if dom["kind"] == "cpufreq":
            files = {"scaling_governor": gov, "scaling_min_freq": eff_min, "scaling_max_freq": eff_max,
                     "scaling_cur_freq": cur,
                     "scaling_setspeed": dom["setspeed"] if gov == "userspace" else "<unsupported>"}
        else:
            files = {"governor": gov, "min_freq": eff_min, "max_freq": eff_max, "cur_freq": cur,
                     "target_freq": cur}
            if gov == "userspace":
                files["userspace/set_freq"] = dom["setspeed"]
            kgsl = self.root / KGSL_DIR.lstrip("/")
            if kgsl.exists():
                _force_write(kgsl / "gpuclk", cur)
        for name, value in files.items():
            if dom.get("shown", {}).get(name) != value:
                _force_write(base / name, value)
        dom["shown"] = files

    def reconcile(self) -> list[str]:
        """Apply what was written straight into the files (by a shell that bypassed ``write``,
        like the test ADB device's) with the kernel's rules, as if each write had gone through it.

        Governors first, then both limits together (so the order the shell wrote them in does not
        matter), then the userspace target. Refused values are put back and reported, like the
        kernel's log would."""
        refused: list[str] = []
        with self._locked() as state:
            for directory, dom in state["domains"].items():
                base = self.root / directory.lstrip("/")
                shown = dom.get("shown", {})
                cpufreq = dom["kind"] == "cpufreq"
                names = (("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")
                         if cpufreq else ("governor", "min_freq", "max_freq", "userspace/set_freq"))
                now = {}
                for name in names:
                    p = base / name
                    if p.exists():
                        now[name] = p.read_text().strip()
                changed = {k: v for k, v in now.items() if str(shown.get(k)) != v}
                if not changed:
                    continue
                gov, lo, hi, target = names
                for attr in (gov, target):
                    if attr in changed:
                        try:
                            self._apply_write(state, directory, dom, attr, changed[attr])
                        except OSError as exc:
                            refused.append(f"{directory}/{attr} = {changed[attr]}: {exc.strerror}")
                if lo in changed or hi in changed:
                    try:
                        new_lo = self._number(now.get(lo, str(dom["user_min"])))
                        new_hi = self._number(now.get(hi, str(dom["user_max"])))
                        table = dom["table"]
                        new_lo = _resolve_up(min(max(new_lo, table[0]), table[-1]), table)
                        new_hi = _resolve_down(min(max(new_hi, table[0]), table[-1]), table)
                        if new_lo > new_hi:
                            raise OSError(errno.EINVAL, "Invalid argument")
                        dom["user_min"], dom["user_max"] = new_lo, new_hi
                    except OSError as exc:
                        refused.append(f"{directory}/{lo},{hi}: {exc.strerror}")
                dom["shown"] = {}  # rewrite every attribute: what the shell wrote is replaced
                self._settle(state, directory)
            state.setdefault("dmesg", []).extend(refused)
        return refused

    def _thermal_cap(self, state: dict, dom: dict) -> int:
        if not state["thermal"]["capped"]:
            return dom["table"][-1]
        sim = self.board.simulation
        cap = None
        if sim is not None:
            cap = sim.thermal_cap_cpu_khz if dom["kind"] == "cpufreq" else sim.thermal_cap_gpu_hz
        return _resolve_down(cap, dom["table"]) if cap else dom["table"][-1]

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
    def run_frame(
        self,
        sim: Simulator,
        context_len: int | None = None,
        rng: np.random.Generator | None = None,
        period_s: float | None = None,
    ) -> FrameResult:
        """One inference at the frequencies in force now; energy from the board's OPP tables.

        A frequency change still in its transition latency delays the frame by what remains.
        ``period_s`` (the frame period) feeds the temperature model with the average power.
        """
        with self._locked() as state:
            board = self.board
            cpu_dir = f"{CPUFREQ_DIR}/{board.cpu.inference_policy}"
            gpu_dir = f"{DEVFREQ_DIR}/{board.gpu.node}"
            now = time.monotonic_ns()
            transition = 0.0
            for d in (cpu_dir, gpu_dir):
                dom = state["domains"][d]
                transition = max(transition, dom["changed_ns"] + dom["latency_ns"] - now)
            transition = max(transition, 0.0)
            cpu, gpu = state["domains"][cpu_dir]["cur"], state["domains"][gpu_dir]["cur"]
            load = state["background_load"]
            capped = state["thermal"]["capped"]
            res = sim.run(cpu, gpu, context_len, rng, host_slowdown=1.0 + load)
            latency = float(res.latency_ns[0]) + transition
            energy = float(board.frame_energy_j(cpu, gpu, res.host_busy_ns[0], res.gpu_busy_ns[0], latency))
            dt = max(period_s or 0.0, latency * 1e-9)
            self._update_thermal(state, energy / dt if dt > 0 else 0.0, dt)
        return FrameResult(latency, energy, cpu, gpu, float(res.host_busy_ns[0]),
                           float(res.gpu_busy_ns[0]), transition, load, capped)


def _force_write(path: Path, value) -> None:
    """Kernel-side update of an attribute file, whatever its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():  # planted: the kernel's own file replaces it, its target is not touched
        path.unlink()
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    if not mode & 0o200:
        path.chmod(mode | 0o200)
    path.write_text(f"{value}\n")
    if not mode & 0o200:
        path.chmod(mode)


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
