"""One class per kind of frequency domain: its files, how it is read, written, saved and restored.

The sysfs backend (sysfs_backends/sysfs.py) keeps the guarantees common to every domain (one batch
per apply, the settle loop, the conditions, ownership and the state file); what differs between a
cpufreq policy, a devfreq device, an Adreno behind kgsl, a Mali, a memory devfreq node and Jetson's
EMC clock lives here. Adding a kind is adding a class to ``KINDS``.

* cpufreq policy ``/sys/devices/system/cpu/cpufreq/policyN/`` (kHz): ``scaling_setspeed`` under the
  ``userspace`` governor, or ``scaling_min_freq``/``scaling_max_freq`` pinned; the clock's reading
  is ``cpuinfo_cur_freq`` (root-only; absent where the driver cannot read the clock back);
* devfreq device ``/sys/class/devfreq/<node>/`` (Hz; a Qualcomm bus-bandwidth voter's "frequencies"
  are MB/s): ``userspace/set_freq`` (the directory exists only while ``userspace`` is selected) or
  ``min_freq``/``max_freq``; ``cur_freq`` is the clock, ``target_freq`` the last request. Memory
  nodes (RK3588 ``dmc``, Exynos ``mif``, ``soc:qcom,gpubw``) are devfreq devices like any other;
* Adreno (``kgsl``): the devfreq node for limits, ``/sys/class/kgsl/kgsl-3d0/gpuclk`` for the clock;
* Mali: its devfreq node;
* Jetson EMC (``bpmp_emc``): the BPMP firmware's clock interface in debugfs,
  ``/sys/kernel/debug/bpmp/debug/clk/emc/``. ``rate`` (Hz) is what the clock runs and what a write
  asks for; ``min_rate``/``max_rate`` are the range the firmware allows now (a thermal or power
  cap lowers ``max_rate``); ``mrq_rate_locked`` is 1 while a rate set from Linux is held, 0 while
  the BPMP's own DVFS picks the rate. To pin a rate we write ``1`` to ``mrq_rate_locked`` and then
  the rate to ``rate`` (the order NVIDIA's jetson_clocks uses); restore writes the saved ``rate``
  and then the saved ``mrq_rate_locked`` (``0`` hands the clock back to the firmware). The
  governor this domain reports is ``locked`` or ``bpmp``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from dvfs_schema.domains import DomainSpec
from sysfs_backends.base import BackendError, DomainInfo, DomainState
from sysfs_backends.state_file import SavedDomain
from sysfs_backends.transport import OpResult, Read, SysfsIOError, Transport, Write

if TYPE_CHECKING:
    from sysfs_backends.sysfs import SysfsBackend

CPUFREQ_DIR = "/sys/devices/system/cpu/cpufreq"
DEVFREQ_DIR = "/sys/class/devfreq"
KGSL_DIR = "/sys/class/kgsl/kgsl-3d0"
BPMP_CLK_DIR = "/sys/kernel/debug/bpmp/debug/clk"
THERMAL_DIR = "/sys/class/thermal"  # cooling_deviceN/{type,cur_state,max_state}
SETTLE_MARGIN_NS = 5_000_000  # beyond the transition latency, for the kernel's work items to run
SECTION = {"cpu": "cpu", "gpu": "gpu", "mem": "memory"}  # the board config's section of each domain
BPMP_LOCKED, BPMP_FREE = "locked", "bpmp"  # who decides a BPMP clock's rate


class DomainFiles(BaseModel):
    """Absolute paths of one domain's attributes."""

    dir: str
    governor: str  # for a BPMP clock: mrq_rate_locked
    governors: str | None = None
    frequencies: str | None = None
    min: str
    max: str
    cur: str  # the running frequency: the clock's reading where there is one
    last_target: str | None = None  # the frequency last asked of the driver (not a measurement)
    setspeed: str  # userspace setpoint, or a BPMP clock's rate
    hw_min: str | None = None
    hw_max: str | None = None
    transition: str | None = None
    cpus: str | None = None


def to_int(result: OpResult) -> int:
    try:
        return int(str(result.value).split()[0])
    except (ValueError, IndexError):
        raise SysfsIOError(errno.EINVAL, result.op.path, detail=f"not a number: {result.value!r}") from None


class SysfsDomain:
    """A frequency domain as the kernel exposes it (abstract: see the subclasses)."""

    kind: ClassVar[str]

    def __init__(self, spec: DomainSpec, files: DomainFiles) -> None:
        self.spec = spec
        self.name = spec.name
        self.files = files
        self.info: DomainInfo | None = None

    # ---- where it is ---------------------------------------------------------------
    @classmethod
    def locate(cls, spec: DomainSpec, transport: Transport, board: str) -> SysfsDomain:
        """The domain's files on this kernel; BackendError naming the config key if absent."""
        raise NotImplementedError

    def probe(self, transport: Transport) -> list[str]:
        """Checks that need a read once the files are known; notes for people."""
        return []

    def moved(self, real_dir: str) -> None:
        """The domain's directory resolved to ``real_dir`` (a kernel symlink): its files move too."""
        old = self.files.dir
        moved = {k: real_dir + v[len(old):] if isinstance(v, str) and v.startswith(old + "/") else v
                 for k, v in self.files.model_dump().items()}
        moved["dir"] = real_dir
        self.files = DomainFiles(**moved)

    def owns(self, path: str) -> bool:
        return path.startswith(self.files.dir + "/")

    def cooling_types(self, policies: list[str]) -> list[str]:
        """The ``type`` names a thermal cooling device that caps this domain has (after discovery);
        ``policies`` are the kernel's cpufreq policy directories in order. None by default."""
        return []

    # ---- discovery -----------------------------------------------------------------
    def info_paths(self) -> list[str]:
        f = self.files
        return [p for p in (f.governors, f.frequencies, f.hw_min, f.hw_max, f.transition, f.cpus) if p]

    def discover(self, res: dict[str, OpResult], notes: list[str]) -> DomainInfo:
        f, spec = self.files, self.spec
        governors = self._governors(res)
        cfg = list(spec.frequencies)
        got = res.get(f.frequencies) if f.frequencies else None
        if got is not None and got.ok and got.value:
            freqs = sorted({int(x) for x in got.value.split()})
            if freqs != cfg:
                notes.append(f"{self.name}: the kernel's frequency table differs from the board "
                             f"config; using the kernel's ({len(freqs)} entries)")
        else:
            freqs = cfg
            if f.frequencies:
                notes.append(f"{self.name}: {f.frequencies} not readable; using the board config's table")
        if spec.mechanism == "userspace" and "userspace" not in governors:
            raise BackendError(
                f"{f.dir}: mechanism 'userspace' needs the userspace governor, which this kernel "
                f"lacks (available: {' '.join(governors)}); set mechanism: minmax for the "
                f"{SECTION[self.name]} in the board config"
            )

        def number(path: str | None) -> int | None:
            r = res.get(path) if path else None
            return int(r.value) if r is not None and r.ok else None

        latency = number(f.transition)
        latency = spec.transition_latency_ns if latency is None else latency
        cpus = [int(x) for x in res[f.cpus].value.split()] if f.cpus and res[f.cpus].ok else []
        hw_min, hw_max = number(f.hw_min), number(f.hw_max)
        self.info = DomainInfo(
            name=self.name, kind=self.kind, node=spec.node, unit=spec.unit, cpus=cpus,
            frequencies=freqs, governors=governors, mechanism=spec.mechanism,
            transition_latency_ns=latency, settle_timeout_ns=latency + SETTLE_MARGIN_NS,
            cur_source="last_target" if f.cur == f.last_target else "hardware",
            hw_min=freqs[0] if hw_min is None else hw_min, hw_max=freqs[-1] if hw_max is None else hw_max,
        )
        return self.info

    def _governors(self, res: dict[str, OpResult]) -> list[str]:
        g = res[self.files.governors]
        if not g.ok:
            raise SysfsIOError(g.errno or errno.EIO, self.files.governors)
        return g.value.split()

    # ---- reading -------------------------------------------------------------------
    def state_paths(self) -> list[str]:
        f = self.files
        return [f.governor, f.cur, f.min, f.max]

    def parse_state(self, gov: OpResult, cur: OpResult, lo: OpResult, hi: OpResult) -> DomainState:
        return DomainState(governor=gov.value, cur=to_int(cur), min=to_int(lo), max=to_int(hi))

    def readback_paths(self) -> list[str]:
        f = self.files
        return [f.cur, f.min, f.max]

    # ---- writing -------------------------------------------------------------------
    def target_writes(self, target: int, known: DomainState, requested: tuple[int, int],
                      setpoint: int | None, flip: bool) -> list[Write]:
        raise NotImplementedError

    def governor_after(self, known: DomainState) -> str:
        """The governor in force once a target was applied."""
        return known.governor

    def shows_request(self, target: int, cur: int, lo: int, hi: int) -> bool:
        """Whether a read-back shows the request taken up."""
        return cur == target

    def undo_values(self, known: DomainState, requested: tuple[int, int], setpoint: int | None) -> dict[str, str]:
        """What each attribute we may write held before an apply (to undo a partly failed one)."""
        raise NotImplementedError

    # ---- save / restore --------------------------------------------------------------
    def setpoint_path(self, state: DomainState) -> str | None:
        """Where the part of the original state beyond governor and limits is read (a userspace
        governor's setpoint), or None when there is none."""
        return None

    def defaults(self) -> SavedDomain:
        raise NotImplementedError

    def put_back(self, backend: SysfsBackend, saved: SavedDomain, attempt) -> list[str]:
        """Write the saved settings back (every step attempted); returns the failures."""
        raise NotImplementedError


class GovernedDomain(SysfsDomain):
    """A domain driven through a kernel governor and min/max limits (cpufreq or devfreq)."""

    def target_writes(self, target, known, requested, setpoint, flip):
        f = self.files
        if self.spec.mechanism == "minmax":
            lo, hi = requested
            return limit_writes(f, lo, hi, target, target, flip)
        writes = []
        if known.governor != "userspace":
            writes.append(Write(f.governor, "userspace"))
        if known.governor != "userspace" or setpoint != target:
            writes.append(Write(f.setspeed, str(target)))
        return writes

    def governor_after(self, known):
        return "userspace" if self.spec.mechanism == "userspace" else known.governor

    def shows_request(self, target, cur, lo, hi):
        if self.spec.mechanism == "minmax" and not lo == hi == target:
            return False
        return cur == target

    def undo_values(self, known, requested, setpoint):
        f = self.files
        lo, hi = requested
        return {f.governor: known.governor, f.min: str(lo), f.max: str(hi),
                f.setspeed: str(known.cur if setpoint is None else setpoint)}

    def setpoint_path(self, state):
        return self.files.setspeed if state.governor == "userspace" else None

    def defaults(self):
        return SavedDomain(governor=self.spec.default_governor, min=self.info.hw_min, max=self.info.hw_max)

    def put_back(self, backend, saved, attempt):
        f, name = self.files, self.name
        failures: list[str] = []
        try:
            gov, lo_now, hi_now = backend._read_many([f.governor, f.min, f.max])
            lo, hi = backend._requested.get(name, (to_int(lo_now), to_int(hi_now)))
        except SysfsIOError as exc:
            return [f"{name}: {exc}"]
        gov_ok = True
        if gov.value != saved.governor:
            exc = attempt(name, [Write(f.governor, saved.governor)])
            if exc is not None:
                failures.append(f"{name}: governor {saved.governor!r} not restored: {exc}")
                gov_ok = False
        exc = attempt(name, limit_writes(f, lo, hi, saved.min, saved.max, every=True))
        if exc is not None and exc.errno == errno.EINVAL:
            # the kernel's requests were not what we thought: the other order must work
            exc = attempt(name, limit_writes(f, lo, hi, saved.min, saved.max, flip=True, every=True))
        if exc is not None:
            failures.append(f"{name}: limits {saved.min}..{saved.max} not restored: {exc}")
        else:
            backend._requested[name] = (saved.min, saved.max)
        if gov_ok and saved.governor == "userspace" and saved.setpoint is not None:
            exc = attempt(name, [Write(f.setspeed, str(saved.setpoint))])
            if exc is not None:
                failures.append(f"{name}: userspace setpoint {saved.setpoint} not restored: {exc}")
        if gov_ok:
            try:
                now = backend._read_many([f.governor])[0].value
            except SysfsIOError as exc:
                return [*failures, f"{name}: {exc}"]
            if now != saved.governor:
                failures.append(f"{name}: {f.governor} reads {now!r} after writing {saved.governor!r}")
        return failures


def limit_writes(f: DomainFiles, cur_min: int, cur_max: int, new_min: int, new_max: int,
                 flip: bool = False, every: bool = False) -> list[Write]:
    """Writes taking limits to (new_min, new_max) without ever having min > max.

    ``flip`` inverts the order: the last resort when the kernel's view of the limits is not what
    we could read (see ``SysfsBackend._requested``). ``every`` writes both limits even where
    (cur_min, cur_max) says one is there already: the restore's rule, since that belief can be
    wrong (a command interrupted after the board ran it; a thermal cap showing the original
    value while our request is still in force)."""
    writes = []
    first_max = (new_min > cur_max) != flip
    if first_max and (every or new_max != cur_max):
        writes.append(Write(f.max, str(new_max)))
    if every or new_min != cur_min:
        writes.append(Write(f.min, str(new_min)))
    if not first_max and (every or new_max != cur_max):
        writes.append(Write(f.max, str(new_max)))
    return writes


class CpufreqPolicy(GovernedDomain):
    kind = "cpufreq"

    @classmethod
    def locate(cls, spec, transport, board):
        d = f"{CPUFREQ_DIR}/{spec.node}"
        if not transport.exists(d):
            found = [p for p in transport.listdir(CPUFREQ_DIR) if p.startswith("policy")]
            raise BackendError(
                f"board {board!r}: cpufreq policy {spec.node!r} not found under {CPUFREQ_DIR} "
                f"(found: {', '.join(found) or 'none'}); fix cpu.inference_policy in the board config"
            )
        return cls(spec, DomainFiles(
            dir=d, governor=f"{d}/scaling_governor", governors=f"{d}/scaling_available_governors",
            frequencies=f"{d}/scaling_available_frequencies", min=f"{d}/scaling_min_freq",
            max=f"{d}/scaling_max_freq", cur=f"{d}/cpuinfo_cur_freq",
            last_target=f"{d}/scaling_cur_freq", setspeed=f"{d}/scaling_setspeed",
            hw_min=f"{d}/cpuinfo_min_freq", hw_max=f"{d}/cpuinfo_max_freq",
            transition=f"{d}/cpuinfo_transition_latency", cpus=f"{d}/related_cpus",
        ))

    def cooling_types(self, policies):
        """cpufreq_cooling names its device after the policy's first CPU (``cpufreq-cpuN``, kernel
        5.x and later); older kernels numbered them in registration order (``thermal-cpufreq-N``,
        N counting policies from 0, the order they come up in: by first CPU)."""
        cpus = self.info.cpus if self.info is not None else []
        names = [f"cpufreq-cpu{c}" for c in cpus]
        ours = self.files.dir.rsplit("/", 1)[-1]
        order = sorted(policies, key=lambda p: int(p[6:]) if p[6:].isdigit() else 1 << 30)
        if ours in order:
            names.append(f"thermal-cpufreq-{order.index(ours)}")
        return names

    def probe(self, transport):
        f = self.files
        probe = transport.run([Read(f.cur)])[0]
        if probe.ok:
            return []
        # no clock read-back (acpi-cpufreq on an I/O port, or not root): the last target it is
        why = ("does not exist" if probe.errno == errno.ENOENT
               else "is not readable (cpuinfo_cur_freq is root-only)")
        self.files = f.model_copy(update={"cur": f.last_target})
        return [f"{self.name}: {f.cur} {why}; scaling_cur_freq (the last target the driver was given, "
                "not the clock) is reported as the frequency in force"]


class DevfreqDevice(GovernedDomain):
    """A devfreq device: a GPU, or a memory/bus node (whose unit may be MB/s, used as is)."""

    kind = "devfreq"

    def cooling_types(self, policies):
        """devfreq_cooling names its device ``devfreq-<device>`` (the devfreq node's parent, whose
        name the node carries), a GPU driver registering it itself likewise (panfrost, lima)."""
        return [f"devfreq-{self.spec.node}"]

    @classmethod
    def locate(cls, spec, transport, board):
        d = f"{DEVFREQ_DIR}/{spec.node}"
        if not transport.exists(d):
            found = transport.listdir(DEVFREQ_DIR)
            raise BackendError(
                f"board {board!r}: devfreq device {spec.node!r} not found under {DEVFREQ_DIR} "
                f"(found: {', '.join(found) or 'none'}); fix {SECTION[spec.name]}.node"
            )
        return cls(spec, cls._files(d))

    @staticmethod
    def _files(d: str, cur: str | None = None) -> DomainFiles:
        return DomainFiles(
            dir=d, governor=f"{d}/governor", governors=f"{d}/available_governors",
            frequencies=f"{d}/available_frequencies", min=f"{d}/min_freq", max=f"{d}/max_freq",
            cur=cur or f"{d}/cur_freq", last_target=f"{d}/target_freq", setspeed=f"{d}/userspace/set_freq",
        )


class MaliGpu(DevfreqDevice):
    """An Arm Mali, driven through its devfreq node."""

    kind = "mali"


class KgslGpu(DevfreqDevice):
    """An Adreno: the devfreq node of kgsl-3d0 for limits, kgsl's ``gpuclk`` for the clock."""

    kind = "kgsl"

    @classmethod
    def locate(cls, spec, transport, board):
        dom = super().locate(spec, transport, board)
        if not transport.exists(f"{KGSL_DIR}/gpuclk"):
            raise BackendError(f"board {board!r}: gpu.kind is kgsl but {KGSL_DIR}/gpuclk is missing")
        dom.files = dom.files.model_copy(update={"cur": f"{KGSL_DIR}/gpuclk"})
        return dom


class BpmpClock(SysfsDomain):
    """Jetson's EMC (or any BPMP clock) through the BPMP debugfs clock interface: a rate held with
    ``mrq_rate_locked`` (see the module docstring). Only the board config's lockable rates are
    asked for; the interface shows no table of its own."""

    kind = "bpmp_emc"

    @classmethod
    def locate(cls, spec, transport, board):
        d = f"{BPMP_CLK_DIR}/{spec.node}"
        if not transport.exists(d):
            where = ("debugfs is not mounted or not readable (mount -t debugfs none /sys/kernel/debug; "
                     "root only)" if not transport.exists(BPMP_CLK_DIR)
                     else f"found: {', '.join(transport.listdir(BPMP_CLK_DIR)) or 'none'}")
            raise BackendError(f"board {board!r}: BPMP clock {spec.node!r} not found under {BPMP_CLK_DIR} "
                               f"({where}); fix memory.node")
        return cls(spec, DomainFiles(dir=d, governor=f"{d}/mrq_rate_locked", min=f"{d}/min_rate",
                                     max=f"{d}/max_rate", cur=f"{d}/rate", setspeed=f"{d}/rate"))

    def info_paths(self):
        return []

    def _governors(self, res):
        return [BPMP_FREE, BPMP_LOCKED]

    def parse_state(self, gov, cur, lo, hi):
        locked = to_int(gov) != 0
        return DomainState(governor=BPMP_LOCKED if locked else BPMP_FREE, cur=to_int(cur),
                           min=to_int(lo), max=to_int(hi))

    def target_writes(self, target, known, requested, setpoint, flip):
        f = self.files
        writes = []
        if known.governor != BPMP_LOCKED:
            writes.append(Write(f.governor, "1"))
        if known.governor != BPMP_LOCKED or setpoint != target:
            writes.append(Write(f.setspeed, str(target)))
        return writes

    def governor_after(self, known):
        return BPMP_LOCKED

    def undo_values(self, known, requested, setpoint):
        f = self.files
        return {f.governor: "1" if known.governor == BPMP_LOCKED else "0",
                f.setspeed: str(known.cur if setpoint is None else setpoint)}

    def setpoint_path(self, state):
        return self.files.setspeed  # the rate running is part of what comes back

    def defaults(self):
        return SavedDomain(governor=BPMP_FREE, min=self.info.hw_min, max=self.info.hw_max)

    def put_back(self, backend, saved, attempt):
        f, name = self.files, self.name
        writes = []
        if saved.setpoint is not None:
            writes.append(Write(f.setspeed, str(saved.setpoint)))
        writes.append(Write(f.governor, "1" if saved.governor == BPMP_LOCKED else "0"))
        exc = attempt(name, writes)
        if exc is not None:
            return [f"{name}: rate {saved.setpoint} / mrq_rate_locked ({saved.governor}) not restored: {exc}"]
        try:
            now = self.parse_state(*backend._read_many(self.state_paths()))
        except SysfsIOError as exc:
            return [f"{name}: {exc}"]
        if now.governor != saved.governor:
            return [f"{name}: {f.governor} shows {now.governor} after restoring {saved.governor}"]
        return []


KINDS: dict[str, type[SysfsDomain]] = {
    cls.kind: cls for cls in (CpufreqPolicy, DevfreqDevice, KgslGpu, MaliGpu, BpmpClock)
}


class CoolingDevice(BaseModel):
    """A thermal cooling device that caps one domain: at state ``s`` (of ``max_state``) the domain
    may run at most the ``s``-th frequency of its table counted from the top (0: no cap), as
    cpufreq_cooling and devfreq_cooling map states to frequencies."""

    dir: str
    type: str
    max_state: int

    @property
    def cur_state(self) -> str:
        return f"{self.dir}/cur_state"

    def cap(self, state: int, table: list[int]) -> int:
        """The highest frequency the domain may run at ``state`` (the table's top at state 0)."""
        return table[max(0, len(table) - 1 - min(max(state, 0), self.max_state))]


def find_cooling(doms: dict[str, SysfsDomain], transport: Transport,
                 notes: list[str]) -> dict[str, list[CoolingDevice]]:
    """Per domain, the cooling devices under /sys/class/thermal that cap it (by type name), after
    discovery. A device whose number of states does not match the domain's table (``max_state``
    is the table's length less one) is left out with a note: its states cannot be mapped."""
    if not transport.exists(THERMAL_DIR):
        return {}
    devs = [n for n in transport.listdir(THERMAL_DIR) if n.startswith("cooling_device")]
    policies = [p for p in transport.listdir(CPUFREQ_DIR) if p.startswith("policy")] \
        if transport.exists(CPUFREQ_DIR) else []
    ops = [Read(f"{THERMAL_DIR}/{n}/{a}") for n in devs for a in ("type", "max_state")]
    res = transport.run(ops) if ops else []
    found: dict[str, list[CoolingDevice]] = {}
    for k, n in enumerate(devs):
        kind, top = res[2 * k], res[2 * k + 1]
        if not (kind.ok and top.ok):
            continue
        name = str(kind.value).strip()
        for dname, dom in doms.items():
            if dom.info is None or name not in dom.cooling_types(policies):
                continue
            try:
                max_state = to_int(top)
            except SysfsIOError:
                continue
            if max_state != len(dom.info.frequencies) - 1:
                notes.append(f"{dname}: cooling device {THERMAL_DIR}/{n} ({name}) has {max_state + 1} "
                             f"states for {len(dom.info.frequencies)} frequencies; not used for caps")
                continue
            found.setdefault(dname, []).append(CoolingDevice(dir=f"{THERMAL_DIR}/{n}", type=name,
                                                             max_state=max_state))
    return found


def locate(spec: DomainSpec, transport: Transport, board: str) -> SysfsDomain:
    """The domain object for a board config's domain, found on this kernel."""
    try:
        cls = KINDS[spec.kind]
    except KeyError:
        raise BackendError(f"board {board!r}: no backend support for a {spec.kind!r} domain "
                           f"(supported: {', '.join(KINDS)})") from None
    return cls.locate(spec, transport, board)
