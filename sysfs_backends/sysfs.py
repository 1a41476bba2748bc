"""Shared sysfs logic for every frequency domain a board has, over any transport.

The board config's domains (``BoardConfig.domains``: CPU, GPU, memory) become domain objects
(sysfs_backends/domain_kinds.py: cpufreq policy, devfreq device, kgsl, Mali, Jetson's BPMP EMC),
each knowing its files and how it is read, written, saved and restored. This module keeps what is
common to all of them, following the kernel's documented ABI (Documentation/admin-guide/pm/
cpufreq.rst, Documentation/ABI/testing/sysfs-class-devfreq):

* one batch of writes and read-backs per apply, whatever the number of domains;
* a requested frequency that is not in the table is rounded the way the kernel resolves it
  (the lowest supported frequency at or above the request, ``CPUFREQ_RELATION_L`` / devfreq's
  recommended OPP; the highest one if the request is above all) and the result says so;
* min/max limits are written in the order that never leaves ``min > max``;
* what is in force is read back *after the kernel has settled*: cpufreq applies new limits
  asynchronously (a work item), so a read in the same batch as the writes can still show the old
  limits and frequency. The backend re-reads until the files show the request, bounded by the
  domain's transition latency plus a margin, and only then decides what runs;
* the running frequency is the clock's own reading where the kernel has one
  (``cpuinfo_cur_freq``, devfreq ``cur_freq``, kgsl ``gpuclk``); ``scaling_cur_freq`` and
  ``target_freq`` are the last target, not a measurement;
* a domain below its target is ``capped`` only when the limits the kernel shows explain it; a clock
  that stays off a target its limits allow is ``unreachable`` (an OPP the clock cannot produce).

Writes only ever go to files inside the domain directories found by discovery.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dvfs_schema.board import BoardConfig
from dvfs_schema.domains import round_to_table
from sysfs_backends.base import (
    ApplyResult,
    Backend,
    BackendError,
    Discovery,
    DomainInfo,
    DomainState,
    requested_targets,
)
from sysfs_backends.domain_kinds import (  # noqa: F401 - the paths, re-exported for the virtual kernel
    BPMP_CLK_DIR,
    CPUFREQ_DIR,
    DEVFREQ_DIR,
    KGSL_DIR,
    THERMAL_DIR,
    CoolingDevice,
    SysfsDomain,
    find_cooling,
    locate,
    to_int,
)
from sysfs_backends.power_rails import EnergyMeter, discover_rails
from sysfs_backends.state_file import (
    BoardBusy,
    Ownership,
    RestoreIncomplete,
    SavedDomain,
    SavedState,
    StateFileError,
    read_state,
    remove_state,
    write_state,
)
from sysfs_backends.transport import OpResult, Read, SysfsIOError, Transport, Write

log = logging.getLogger(__name__)

SETTLE_POLL_NS = (100_000, 2_000_000)  # first and longest wait between re-reads
PENDING_TIMEOUT_NS = 50_000_000  # longest wait for a limit write the kernel has visibly not taken up


class _StaleLimits(Exception):
    """An EINVAL that a fresh read of the limits may explain."""


def _governor_alive(pid: int) -> bool:
    """Whether ``pid`` is a live dvfs-gov/governor process on this machine (a state file's writer
    from before ownership locks existed); a reused pid of anything else does not count."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"dvfs-gov" in cmdline or b"governor.cli" in cmdline


_int = to_int


class SysfsBackend(Backend):
    """The board's domains over a transport. ``state_file`` makes save/restore survive a crash."""

    name = "sysfs"

    def __init__(
        self, board: BoardConfig, transport: Transport, state_file: str | Path | None = None,
        board_lock: Path | None = None,
    ) -> None:
        self.board = board
        self.transport = transport
        self.state_file = Path(state_file) if state_file else None
        self._doms: dict[str, SysfsDomain] = {}
        self._info: dict[str, DomainInfo] | None = None
        self._known: dict[str, DomainState] = {}
        # The limits we last asked for, per domain. Under a thermal cap the files show the
        # *effective* limits, not the requests the kernel checks new writes against, so write
        # order and "nothing to write" are decided from what we asked for.
        self._requested: dict[str, tuple[int, int]] = {}
        # The userspace setpoint we last wrote, per domain: a clock that cannot reach it reads
        # something else, and that must not make us write the same setpoint on every apply.
        self._setpoint: dict[str, int] = {}
        self._generation = getattr(transport, "generation", 0)
        self._saved: SavedState | None = None
        self._owner = Ownership(self.state_file, board_lock) if self.state_file else None
        self.target: str | None = None  # which board this is (tree or phone), checked against state files
        self.notes: list[str] = []
        self._meter: EnergyMeter | None = None
        self._cooling: dict[str, list[CoolingDevice]] = {}  # per domain, found with discovery

    # ---- transport helpers ----------------------------------------------------------
    def _batch(self, ops: list) -> list[OpResult]:
        return self.transport.run(ops)

    def _read_many(self, paths: list[str]) -> list[OpResult]:
        results = self._batch([Read(p) for p in paths])
        for r in results:
            if not r.ok:
                raise SysfsIOError(r.errno or errno.EIO, r.op.path)
        return results

    # ---- discovery ------------------------------------------------------------------
    def _domain_files(self) -> dict[str, SysfsDomain]:
        """The board's domain objects, found on this kernel (once), in the config's order."""
        if self._doms:
            return self._doms
        doms = {}
        for spec in self.board.domains:
            dom = locate(spec, self.transport, self.board.name)
            self._resolve(dom)
            self.notes.extend(dom.probe(self.transport))
            doms[spec.name] = dom
        self._doms = doms
        return doms

    def _resolve(self, dom: SysfsDomain) -> None:
        """The domain's directory resolved once (on a real kernel /sys/class/devfreq/<node> is a
        symlink into /sys/devices): it must lie inside the tree's /sys (debugfs is mounted at
        /sys/kernel/debug), and every write goes to an attribute of that real directory, so no
        later symlink can redirect it."""
        resolve = getattr(self.transport, "resolve_dir", None)
        if resolve is None:
            return
        d = dom.files.dir
        try:
            real, where = resolve(d)
        except OSError as exc:
            raise SysfsIOError(exc.errno or errno.EIO, d) from None
        if real != "/sys" and not real.startswith("/sys/"):
            raise BackendError(f"{d}: resolves to {where}, outside the sysfs tree; refusing to "
                               "write there (a symlink planted in the tree?)")
        if real != d:
            dom.moved(real)

    def domains(self) -> dict[str, DomainInfo]:
        if self._info is not None:
            return self._info
        doms = self._domain_files()
        info: dict[str, DomainInfo] = {}
        for name, dom in doms.items():
            paths = dom.info_paths()
            res = {r.op.path: r for r in self._batch([Read(p) for p in paths])} if paths else {}
            info[name] = dom.discover(res, self.notes)
        self._cooling = find_cooling(doms, self.transport, self.notes)
        for name, devs in self._cooling.items():
            info[name] = info[name].model_copy(update={"cooling_devices": [f"{c.dir} ({c.type})" for c in devs]})
        self._info = info
        return info

    def _cooling_paths(self) -> list[str]:
        """The ``cur_state`` of every cooling device that caps a domain, read with each read-back."""
        return [c.cur_state for devs in self._cooling.values() for c in devs]

    def _cooling_caps(self, results: dict[str, OpResult]) -> dict[str, int]:
        """Per domain with cooling devices, the cap their states set now (the lowest of them; the
        table's top at state 0). A device whose state cannot be read is left out."""
        out = {}
        for name, devs in self._cooling.items():
            table = self._info[name].frequencies if self._info else []
            caps = []
            for c in devs:
                r = results.get(c.cur_state)
                if r is None or not r.ok:
                    continue
                try:
                    caps.append(c.cap(_int(r), table))
                except SysfsIOError:
                    continue
            if caps and table:
                out[name] = min(caps)
        return out

    def discover(self) -> Discovery:
        info = self.domains()
        meter = self.power_meter()
        return Discovery(backend=self.name, board=self.board.name, domains=info, states=self.state(),
                         rails=[r.info for r in meter.rails] if meter else [], notes=list(self.notes))

    def power_meter(self) -> EnergyMeter | None:
        """The power rails the transport's tree shows (INA3221, battery, RAPL), discovered once;
        None where there are none (the notes say what was found but cannot be read)."""
        if self._meter is None:
            rails, notes = discover_rails(self.transport)
            self.notes.extend(notes)
            self._meter = EnergyMeter(self.transport, rails)
        return self._meter if self._meter.rails else None

    # ---- reading --------------------------------------------------------------------
    def state(self) -> dict[str, DomainState]:
        doms = self._domain_files()
        self.domains()  # the cooling devices are found with discovery
        paths = [p for d in doms.values() for p in d.state_paths()]
        cooling = self._cooling_paths()
        res = self._batch([Read(p) for p in [*paths, *cooling]])
        for r in res[:len(paths)]:
            if not r.ok:
                raise SysfsIOError(r.errno or errno.EIO, r.op.path)
        caps = self._cooling_caps({r.op.path: r for r in res[len(paths):]})
        out = {name: dom.parse_state(*res[4 * k: 4 * k + 4]).model_copy(update={"cooling_cap": caps.get(name)})
               for k, (name, dom) in enumerate(doms.items())}
        self._known = {k: v.model_copy() for k, v in out.items()}
        for k, v in out.items():  # what we have not asked for ourselves, the kernel shows
            self._requested.setdefault(k, (v.min, v.max))
        return out

    # ---- ownership, save / restore ---------------------------------------------------
    def claim(self) -> None:
        """Become the board's only owner before touching it or its state file (BoardBusy names
        a live owner's pid); see sysfs_backends.state_file. Idempotent."""
        if self._owner is not None:
            self._owner.acquire(f"{self.board.name!r} ({self.target or self.state_file})")

    def owner_pid(self) -> int | None:
        """The pid of another live process owning this board, or None."""
        return self._owner.owner() if self._owner is not None else None

    def release(self) -> None:
        if self._owner is not None:
            self._owner.release()

    def close(self) -> None:
        self.release()
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def _setpoints(self, current: dict[str, DomainState]) -> dict[str, int]:
        """The userspace governor's target of domains running it (a BPMP clock's rate): part of
        their original state."""
        doms = self._domain_files()
        where = {n: doms[n].setpoint_path(s) for n, s in current.items()}
        names = [n for n, p in where.items() if p]
        out = {}
        for name, r in zip(names, self._batch([Read(where[n]) for n in names]), strict=True):
            try:
                out[name] = _int(r) if r.ok else None
            except SysfsIOError:
                out[name] = None
            if out[name] is not None and out[name] <= 0:
                out[name] = None
            if out[name] is None:
                # devfreq's userspace governor reads "undefined" until a request is written, and keeps
                # the frequency it had: that frequency is what must come back, so it is the request
                # restore writes (no write can make the file say "undefined" again)
                out[name] = current[name].cur
                self.notes.append(f"{name}: the userspace setpoint ({where[name]}) holds no request; "
                                  f"restore will request the frequency running now, {current[name].cur}")
        return out

    def save(self) -> None:
        if self._saved is not None:
            # the owner keeps its state file: if someone deleted it, a later SIGKILL would leave
            # the board pinned with nothing to restore from
            if self.state_file and not os.path.lexists(self.state_file):
                log.warning("%s was deleted while running; written again", self.state_file)
                write_state(self.state_file, self._saved)
            return
        with self._owning():
            self._save_now()

    def _save_now(self) -> None:
        if self.state_file:
            stale = read_state(self.state_file)
            if stale is not None:
                raise BackendError(
                    f"{self.state_file}: settings saved by an earlier run (pid {stale.pid}) were never "
                    "restored; run `dvfs-gov restore` first so the true originals are not lost"
                )
        current = self.state()
        setpoints = self._setpoints(current)
        try:
            saved = SavedState(
                board=self.board.name, backend=self.name, target=self.target, pid=os.getpid(),
                domains={d: SavedDomain(governor=s.governor, min=s.min, max=s.max, setpoint=setpoints.get(d),
                                        kind=self._doms[d].kind)
                         for d, s in current.items()},
            )
        except ValueError as exc:
            raise BackendError(f"board {self.board.name!r}: the current settings cannot be saved as "
                               f"originals ({exc}); nothing was changed") from None
        if self.state_file:
            write_state(self.state_file, saved)
        self._saved = saved

    def load_saved(self) -> SavedState | None:
        """Adopt a state file left by a run that did not restore (crash, SIGKILL)."""
        if self._saved is None and self.state_file:
            saved = read_state(self.state_file)
            if saved is not None:
                self._check_ours(saved)
                owning = self._owner is not None and self._owner.held  # not under --force
                if owning and saved.pid != os.getpid() and _governor_alive(saved.pid):
                    raise BoardBusy(f"{self.state_file}: written by pid {saved.pid}, a governor that is still "
                                    "running without holding the board's lock (an older version?); stop it "
                                    "first", saved.pid)
            self._saved = saved
        return self._saved

    def _check_ours(self, saved: SavedState) -> None:
        """A state file written for another board (or another tree/phone) is never applied here."""
        where = f"{self.state_file}: the state file"
        if saved.board != self.board.name:
            raise StateFileError(f"{where} belongs to board {saved.board!r}, not {self.board.name!r}; "
                                 "use the right --board/--state-file (`dvfs-gov restore --defaults` resets "
                                 "this board and leaves that file alone)")
        if saved.target and self.target and saved.target != self.target:
            raise StateFileError(f"{where} belongs to {saved.target}, not {self.target}; "
                                 "use the right --state-file (`dvfs-gov restore --defaults` resets this "
                                 "board and leaves that file alone)")
        doms = self._domain_files()
        unknown = sorted(set(saved.domains) - set(doms))
        if unknown:
            raise StateFileError(f"{where} names domain(s) {', '.join(unknown)} that board "
                                 f"{self.board.name!r} does not have (allowed: {', '.join(doms)})")
        for name, d in saved.domains.items():
            if d.kind is not None and d.kind != doms[name].kind:
                raise StateFileError(f"{where} saved the {name} domain as {d.kind!r}, but board "
                                     f"{self.board.name!r} drives it as {doms[name].kind!r}")

    @contextmanager
    def _owning(self, force: bool = False) -> Iterator[bool]:
        """Claim the board for the block; yields True when ``force`` goes on under a live owner.
        The claim is given back if the block fails with nothing saved (a damaged state file, a
        refused save), so a failed start does not keep others out."""
        under_owner = False
        try:
            self.claim()
        except BoardBusy:
            if not force:
                raise
            under_owner = True
        try:
            yield under_owner
        except RestoreIncomplete:
            raise  # the saved state is still ours to retry
        except BaseException:
            if self._saved is None and not under_owner:  # nothing of ours to protect
                self.release()
            raise

    def recover_crashed(self) -> list[str]:
        with self._owning():
            if self._saved is None and self.load_saved() is not None:
                return self.restore(keep_claim=True)  # and go on owning: no gap for another
        return []

    def restore(self, force: bool = False, keep_claim: bool = False) -> list[str]:
        """Put the saved settings back. Every domain is attempted; if anything fails,
        RestoreIncomplete lists each failure and the state file is kept for a later try.

        ``force`` restores under a live owner (``dvfs-gov restore --force``): its state file is
        left in place, since it is still that owner's."""
        with self._owning(force) as under_owner:
            if self._saved is None and self.load_saved() is None:
                if not under_owner and not keep_claim:
                    self.release()
                return []
            saved = self._saved
            if under_owner:
                self._saved = None  # the owner's, not ours
            keep_claim = keep_claim and not under_owner
            done, failures = self._put_back(saved.domains)
            if failures:
                raise RestoreIncomplete(self.board.name, self.state_file, done, failures)
            self._saved = None
            if not under_owner:
                if self.state_file:
                    remove_state(self.state_file)
                if not keep_claim:
                    self.release()
            return done

    def defaults(self) -> dict[str, SavedDomain]:
        """The kernel's defaults: the full hardware range and the board config's default governor."""
        self.domains()
        return {name: dom.defaults() for name, dom in self._doms.items()}

    def differs_from_defaults(self) -> list[str]:
        """What is not at the kernel's defaults now, for people (empty when all is)."""
        out = []
        current = self.state()
        for name, d in self.defaults().items():
            s = current[name]
            if (s.governor, s.min, s.max) != (d.governor, d.min, d.max):
                out.append(f"{name}: governor {s.governor}, limits {s.min}..{s.max} "
                           f"(defaults: {d.governor}, {d.min}..{d.max})")
        return out

    def restore_defaults(self, force: bool = False) -> list[str]:
        """Back to the kernel's defaults, without a state file (a damaged or lost one is removed
        once the board is back; another board's is left alone). ``force`` as in ``restore``."""
        with self._owning(force) as under_owner:
            done, failures = self._put_back(self.defaults())
            if failures:
                raise RestoreIncomplete(self.board.name, self.state_file, done, failures)
            if not under_owner:
                self._saved = None
                if self.state_file and not self._belongs_elsewhere():
                    remove_state(self.state_file)
                self.release()
            return done

    def _belongs_elsewhere(self) -> bool:
        """The state file is intact and another board's (never delete that one's originals)."""
        try:
            saved = read_state(self.state_file)
            if saved is not None:
                self._check_ours(saved)
        except StateFileError as exc:
            return "belongs to" in str(exc)
        return False

    def _put_back(self, domains: dict[str, SavedDomain]) -> tuple[list[str], list[str]]:
        """Write governors, limits and userspace setpoints back, domain by domain, attempting
        everything; returns (what was done, what failed)."""
        doms = self._domain_files()
        self.domains()
        done: list[str] = []
        failures: list[str] = []

        def attempt(name: str, writes: list[Write]) -> SysfsIOError | None:
            try:
                self._run_writes(writes)
            except SysfsIOError as exc:  # a batch stops at the failed write: those before it are done
                paths = [w.path for w in writes]
                ok = writes[:paths.index(exc.path)] if exc.path in paths else []
                done.extend(f"{name}: {w.path.rsplit('/', 1)[-1]} = {w.value}" for w in ok)
                return exc
            done.extend(f"{name}: {w.path.rsplit('/', 1)[-1]} = {w.value}" for w in writes)
            return None

        for name, saved in domains.items():
            failures.extend(doms[name].put_back(self, saved, attempt))
        try:
            self.state()
        except SysfsIOError as exc:
            failures.append(str(exc))
        return done, failures

    # ---- applying -------------------------------------------------------------------
    def _domain_writes(self, name: str, target: int, flip: bool) -> list[Write]:
        return self._doms[name].target_writes(target, self._known[name], self._requested[name],
                                              self._setpoint.get(name), flip)

    def _run_writes(self, writes: list[Write]) -> list[OpResult]:
        for w in writes:  # a config can never make us write outside the discovered directories
            if not any(d.owns(w.path) for d in self._doms.values()):
                raise BackendError(f"refusing to write outside the discovered domains: {w.path}")
        results = self._batch(writes)
        failed = next((r for r in results if not r.ok and not r.skipped), None)
        if failed is not None:
            raise SysfsIOError(failed.errno or errno.EIO, failed.op.path, failed.op.value)
        return results

    def apply(self, targets: Mapping[str, int] | None = None, *, cpu_khz: int | None = None,
              gpu_hz: int | None = None, mem_hz: int | None = None) -> ApplyResult:
        requested = requested_targets(targets, cpu_khz=cpu_khz, gpu_hz=gpu_hz, mem_hz=mem_hz)
        try:
            return self._apply_once(requested, final=False)
        except _StaleLimits:
            # our picture of the limits was stale (thermal, another process): re-read, retry once
            self.state()
            return self._apply_once(requested, final=True)

    def _apply_once(self, requested: dict[str, int], final: bool) -> ApplyResult:
        info = self.domains()
        self.save()  # first apply: save the originals; later: the state file is still there
        generation = getattr(self.transport, "generation", 0)
        if not self._known or generation != self._generation:
            # first apply, or the connection was re-made (the phone may have rebooted): re-read
            self._requested = {}
            self._setpoint = {}
            self.state()
            self._generation = generation
        notes = []
        target = {}
        for name, value in requested.items():
            if name not in info:
                raise BackendError(f"board {self.board.name!r} has no {name} domain "
                                   f"(it has: {', '.join(info)})")
            if value <= 0:
                raise ValueError(f"{name} frequency must be positive, got {value}")
            table = info[name].frequencies
            target[name] = round_to_table(value, table)
            if target[name] != value:
                notes.append(f"{name}: {value} {info[name].unit} is not supported; the kernel "
                             f"resolves it to {target[name]} {info[name].unit}")
        trips_before = self.transport.round_trips
        before = {name: self._requested.get(name) for name in target}
        writes = [w for name, t in target.items() for w in self._domain_writes(name, t, flip=final)]
        readback = [Read(p) for name in target for p in self._doms[name].readback_paths()]
        cooling = {p: None for p in self._cooling_paths()}
        try:
            results = self._batch([*writes, *readback, *(Read(p) for p in cooling)])
        except BaseException:
            # the writes may or may not have run (the answer was lost, or a stop came): what we
            # asked for is unknown until the kernel is read again
            for name in target:
                self._requested.pop(name, None)
                self._setpoint.pop(name, None)
            self._known = {}
            raise
        for r in results[len(writes) + len(readback):]:
            cooling[r.op.path] = r
        failed = next((r for r in results if not r.ok and not r.skipped), None)
        if failed is not None and isinstance(failed.op, Write):
            done = [r.op for r in results if r.ok and isinstance(r.op, Write)]
            self._undo(done)
            if failed.errno == errno.EINVAL and not final:
                raise _StaleLimits
            detail = f"{failed.value}; " if failed.value else ""
            raise SysfsIOError(failed.errno or errno.EIO, failed.op.path, failed.op.value,
                               detail + "previous settings left in place")
        reads = {name: tuple(_int(r) for r in results[len(writes) + 3 * k: len(writes) + 3 * k + 3])
                 for k, name in enumerate(target)}
        t0 = time.monotonic_ns()
        if writes:
            shown_before = {n: (self._known[n].min, self._known[n].max, self._known[n].cur) for n in target}
            reads = self._settle({n: (lambda r, n=n: self._shows_request(n, target[n], *r)) for n in target},
                                 reads,
                                 {n: (lambda r, n=n: self._still_pending(n, target[n], shown_before[n], *r))
                                  for n in target}, cooling)
        settle_ns = time.monotonic_ns() - t0
        effective, limits, conditions = {}, {}, {}
        for name, (cur, lo, hi) in reads.items():
            gov = self._doms[name].governor_after(self._known[name])
            self._known[name] = DomainState(governor=gov, cur=cur, min=lo, max=hi)
            effective[name], limits[name] = cur, (lo, hi)
            if info[name].mechanism == "minmax":
                self._requested[name] = (target[name], target[name])
            else:
                self._setpoint[name] = target[name]
            condition = self._condition(target[name], cur, lo, hi)
            asked = (target[name], target[name])
            if (condition != "ok" and info[name].mechanism == "minmax" and before[name] is not None
                    and before[name] != asked and (lo, hi) == before[name]):
                condition = "pending"
            conditions[name] = condition
            unit = info[name].unit
            if condition == "capped":
                notes.append(f"{name}: requested {target[name]} {unit} but the kernel's limits are "
                             f"{lo}..{hi} {unit} (thermal cap or another agent): {cur} {unit} is in force")
            elif condition == "floored":
                notes.append(f"{name}: requested {target[name]} {unit} but the kernel's minimum is {lo} "
                             f"{unit} (another agent): {cur} {unit} is in force")
            elif condition == "pending":
                notes.append(f"{name}: after {info[name].settle_timeout_ns / 1e6:.1f} ms the kernel still "
                             f"shows the previous limits {lo}..{hi} {unit}: {cur} {unit} is in force")
            elif condition == "unreachable":
                notes.append(f"{name}: the limits {lo}..{hi} {unit} allow {target[name]} {unit} but the "
                             f"clock runs {cur} {unit}: it cannot reach that frequency")
        return ApplyResult(requested=requested, target=target, effective=effective, limits=limits,
                           conditions=conditions, writes=len(writes), settle_ns=settle_ns,
                           cooling_caps=self._cooling_caps(cooling),
                           round_trips=self.transport.round_trips - trips_before, notes=notes)

    @staticmethod
    def _condition(target: int, cur: int, lo: int, hi: int) -> str:
        if cur == target:
            return "ok"
        if hi < target:
            return "capped"
        if lo > target:
            return "floored"
        return "unreachable"

    def _shows_request(self, name: str, target: int, cur: int, lo: int, hi: int) -> bool:
        """Whether a read-back shows our request taken up: the target running and, for pinned
        limits, both limits at the target."""
        return self._doms[name].shows_request(target, cur, lo, hi)

    def _still_pending(self, name: str, target: int, shown_before: tuple[int, int, int],
                       cur: int, lo: int, hi: int) -> bool:
        """Whether a read-back that does not show the request is a kernel still working on it
        rather than a settled answer (a cap, a floor, a clock that cannot reach the OPP).

        A limit we changed that still shows its value from before the write has not been taken up
        yet (the kernel applies limit writes from a work item, later on a loaded machine), and a
        clock that still runs what it ran before, under limits pinned at the target, may not have
        been switched yet (the governor passes new limits on to the driver from its own work item;
        a ``cur`` that is only the last target the driver was given can differ from pinned limits
        for no other reason). These are waited out for longer than the transition latency; a
        settled cap or floor is not, nor a clock that moved to a frequency of its own (a clock that
        cannot produce the target)."""
        if self._doms[name].info.mechanism != "minmax":
            return False
        old_lo, old_hi, old_cur = shown_before
        if (old_lo != target and lo == old_lo) or (old_hi != target and hi == old_hi):
            return True
        return lo == hi == target and cur != target and (
            cur == old_cur or self._doms[name].info.cur_source == "last_target")

    def _settle(self, shows: dict[str, Callable[[tuple[int, int, int]], bool]],
                reads: dict[str, tuple[int, int, int]] | None = None,
                pending: dict[str, Callable[[tuple[int, int, int]], bool]] | None = None,
                cooling: dict[str, OpResult | None] | None = None,
                ) -> dict[str, tuple[int, int, int]]:
        """Re-read (cur, min, max) until every domain ``shows`` what was asked, or its settle time
        has passed.

        A kernel that applies limits asynchronously shows the previous limits and frequency for a
        while; only a read that shows the request, or the last read once the domain has had its
        transition latency plus a margin, says what is in force. A read that ``pending`` says is
        the kernel still at work is waited on up to PENDING_TIMEOUT_NS. ``cooling`` (cooling
        devices' ``cur_state`` paths) are read again with each re-read, updated in place, so the
        caps they show are as fresh as the limits."""
        info = self.domains()
        start = time.monotonic_ns()
        deadline = {n: start + info[n].settle_timeout_ns for n in shows}
        late = {n: start + max(PENDING_TIMEOUT_NS, info[n].settle_timeout_ns) for n in shows}
        if reads is None:
            reads = {n: (-1, -1, -1) for n in shows}
        wait_ns = SETTLE_POLL_NS[0]

        def still_open(n: str, now: int) -> bool:
            if shows[n](reads[n]):
                return False
            if now < deadline[n]:
                return True
            return pending is not None and now < late[n] and pending[n](reads[n])

        while True:
            now = time.monotonic_ns()
            open_ = [n for n in shows if still_open(n, now)]
            if not open_:
                return reads
            time.sleep(wait_ns / 1e9)
            wait_ns = min(2 * wait_ns, SETTLE_POLL_NS[1])
            paths = [p for n in open_ for p in self._doms[n].readback_paths()]
            extra = list(cooling or ())
            fresh = self._batch([Read(p) for p in [*paths, *extra]])
            for r in fresh[:len(paths)]:
                if not r.ok:
                    raise SysfsIOError(r.errno or errno.EIO, r.op.path)
            for r in fresh[len(paths):]:
                cooling[r.op.path] = r
            for k, n in enumerate(open_):
                reads[n] = tuple(_int(r) for r in fresh[3 * k: 3 * k + 3])

    def _undo(self, done: list[Write]) -> None:
        """Put back what a partly failed apply changed, newest first."""
        before = {}
        for name, dom in self._doms.items():
            k = self._known.get(name)
            if k:
                before.update(dom.undo_values(k, self._requested.get(name, (k.min, k.max)),
                                              self._setpoint.get(name)))
        undo = [Write(w.path, before[w.path]) for w in reversed(done) if w.path in before]
        if undo:
            self._batch(undo)
            # the kernel takes the old limits up as late as it took the new ones: wait for them
            touched = {n for n, d in self._doms.items() for w in undo if d.owns(w.path)}
            expected = {n: self._requested.get(n) for n in touched}
            self._settle({n: (lambda r, lim=expected[n]: lim is None or r[1:] == lim) for n in touched})


def _target_tag(root: str | Path, remote: bool) -> str:
    if remote:  # a phone's address or serial, not a path here
        return "".join(c if c.isalnum() or c in "._:-" else "_" for c in str(root))
    return str(Path(root).resolve()).strip("/").replace("/", "_") or "root"


def _state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "deadline-dvfs"


def saved_state_path(board: str, root: str | Path, remote: bool = False) -> Path:
    """Default state file: $XDG_STATE_HOME/deadline-dvfs/<board>-<root>.json."""
    return _state_dir() / f"{board}-{_target_tag(root, remote)}.json"


def board_lock_path(root: str | Path, remote: bool = False) -> Path:
    """The per-board ownership lock, whatever state file a run is configured with."""
    return _state_dir() / f"board-{_target_tag(root, remote)}.lock"
