"""Other frequency managers: find them before taking over a board, and refuse unless told to proceed.

Two programs writing the same cpufreq/devfreq limits fight silently: each undoes the other's
writes, and the governor's deadline guarantees turn into noise. The usual suspects are found three
ways, each readable without root on a normal system:

- running processes, by ``/proc/PID/comm`` (the kernel's 15-character name) and, for scripts run
  by an interpreter (tuned, auto-cpufreq), the first two words of ``/proc/PID/cmdline``;
- systemd units that are active: systemd keeps ``/run/systemd/units/invocation:UNIT`` for each
  running unit, so no D-Bus call or systemctl subprocess is needed;
- the domains' own state, read through the backend: a ``userspace`` governor that we did not set
  (someone holds a setpoint), or limits pinned to one frequency (what ``jetson_clocks`` leaves).

The roots are parameters so that the tests lay out a fake ``/proc`` and ``/run`` like the real ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel

# name as seen in comm (truncated by the kernel to 15 characters) or as a script's file name
# -> (what it is, what it does to frequencies)
log = logging.getLogger(__name__)

KNOWN: dict[str, tuple[str, str]] = {
    "power-profiles-daemon": ("power-profiles-daemon", "switches CPU energy preferences and boost"),
    "tuned": ("tuned", "applies tuning profiles that set cpufreq governors and limits"),
    "auto-cpufreq": ("auto-cpufreq", "switches cpufreq governors and turbo on its own"),
    "thermald": ("thermald", "lowers frequency limits on its own thermal policy"),
    "cpufreqd": ("cpufreqd", "switches cpufreq governors and limits"),
    "tlp": ("TLP", "sets cpufreq governors and limits on power-source changes"),
    "nvpmodel": ("nvpmodel", "sets Jetson power-mode frequency caps"),
    "jetson_clocks": ("jetson_clocks", "pins Jetson clocks to their maximum"),
    "thermal-engine": ("Qualcomm thermal-engine", "caps CPU/GPU frequencies on the phone's thermal policy"),
    "perfd": ("Qualcomm perfd (perf HAL)", "boosts and locks frequencies on hints"),
    "mpdecision": ("Qualcomm mpdecision", "boosts frequencies and hotplugs cores"),
    "vendor.qti.hardware.perf": ("Qualcomm perf HAL", "boosts and locks frequencies on hints"),
    "android.hardware.power": ("Android power HAL", "boosts frequencies on touch and launch hints"),
}
UNITS = ("power-profiles-daemon.service", "tuned.service", "auto-cpufreq.service", "thermald.service",
         "tlp.service", "nvpmodel.service", "jetson_clocks.service", "cpufreqd.service")
INTERPRETERS = {"python", "python3", "perl", "sh", "bash"}


class ManagerFinding(BaseModel):
    """One other manager found: what it is, how it was seen, what it does."""

    name: str
    evidence: str
    effect: str
    # False for a sign that can also be a kernel or board default (a 'userspace' governor at boot,
    # e.g. a devfreq driver that selects it itself): said as a warning, never a reason to refuse
    certain: bool = True

    def line(self) -> str:
        return f"{self.name} ({self.evidence}): {self.effect}"


def _match(word: str) -> str | None:
    """The known manager a program name is: exactly, or with a HAL's version suffix (@2.0-service)."""
    base = os.path.basename(word)
    for key in KNOWN:
        if base == key or base.startswith(key + "@") or base.startswith(key + "-service"):
            return key
    return None


def _match_truncated(comm: str) -> str | None:
    """A 15-character comm is the kernel's cut of a longer name: accept it only when it is the start
    of exactly one known name (``android.hardwar`` starts every Android HAL's name, so it is not)."""
    if len(comm) != 15:
        return None
    keys = [k for k in KNOWN if k.startswith(comm)]
    return keys[0] if len(keys) == 1 and not comm.startswith("android.hardwar") else None


def _identify(comm: str, cmdline: str | None) -> str | None:
    argv = [a for a in (cmdline or "").split("\0") if a]
    if argv and os.path.basename(argv[0]).rstrip("0123456789.") in INTERPRETERS:
        argv = [a for a in argv[1:] if not a.startswith("-")][:1]  # the script an interpreter runs
    if argv and (key := _match(argv[0])):
        return key
    if comm and (key := _match(comm)):
        return key
    return _match_truncated(comm) if not argv else None


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:  # a process that exited meanwhile, or one we may not look at (hidepid)
        return None


def running_managers(proc_root: str | Path = "/proc") -> list[ManagerFinding]:
    """Known managers among the running processes."""
    found: dict[str, ManagerFinding] = {}
    root = Path(proc_root)
    try:
        entries = [e for e in root.iterdir() if e.name.isdigit()]
    except OSError:
        return []
    for entry in sorted(entries, key=lambda e: int(e.name)):
        if int(entry.name) == os.getpid() and str(root) == "/proc":
            continue
        key = _identify((_read(entry / "comm") or "").strip(), _read(entry / "cmdline"))
        if key is not None and key not in found:
            name, effect = KNOWN[key]
            found[key] = ManagerFinding(name=name, evidence=f"running as pid {entry.name}", effect=effect)
    return list(found.values())


def active_units(run_root: str | Path = "/run") -> list[ManagerFinding]:
    """Known managers' systemd units that are active (systemd's own runtime records)."""
    units = Path(run_root) / "systemd" / "units"
    out = []
    for unit in UNITS:
        if os.path.lexists(units / f"invocation:{unit}"):  # a dangling symlink to the invocation id
            key = unit.removesuffix(".service")
            name, effect = KNOWN.get(key, (key, "manages frequencies"))
            out.append(ManagerFinding(name=name, evidence=f"systemd unit {unit} active", effect=effect))
    return out


def domain_findings(states: dict, ours_saved: bool) -> list[ManagerFinding]:
    """What the domains' state says about another manager (``states``: backend.state()).

    Skipped when our own state file is there: a run of ours that was killed leaves exactly these
    signs, and it is restored on start, not another manager's doing."""
    if ours_saved:
        return []
    out = []
    for name, st in states.items():
        if st.governor == "userspace":
            out.append(ManagerFinding(name=f"maybe a program holding the {name} domain",
                                      evidence=f"{name} governor is 'userspace' (a program's setpoint, or the "
                                      "driver's own default)", effect="it may set the frequency back",
                                      certain=False))
        elif st.min == st.max and st.governor != "userspace":
            out.append(ManagerFinding(name=f"limits pinned on the {name} domain",
                                      evidence=f"min = max = {st.min}, as jetson_clocks or a "
                                      "performance script leaves them", effect="the frequency cannot move"))
    return out


class OtherManagersActive(ValueError):
    """Another frequency manager is active and the user did not say to proceed."""


def drives_this_machine(backend) -> bool:
    """Whether the backend writes this machine's own /sys (then this machine's processes matter;
    for a virtual board or a tree elsewhere they do not, and a phone's are not visible here)."""
    root = getattr(backend, "sysfs_root", None)
    return getattr(backend, "name", "") == "linux" and root is not None and Path(root).resolve() == Path("/")


def find_other_managers(backend=None, proc_root: str | Path = "/proc", run_root: str | Path = "/run",
                        local: bool | None = None) -> list[ManagerFinding]:
    """Every sign of another frequency manager; ``backend`` (optional) adds the domains' state.

    Processes and units are looked for when ``local`` (default: the backend drives this machine's
    /sys, or there is no backend): a phone over ADB has its own processes, which the backend cannot
    list yet (Android's thermal-engine and perf HAL show there as pinned or held domains)."""
    if local is None:
        local = backend is None or drives_this_machine(backend)
    found: list[ManagerFinding] = []
    if local:
        seen = {f.name for f in running_managers(proc_root)}
        found += running_managers(proc_root)
        found += [f for f in active_units(run_root) if f.name not in seen]
    if backend is not None:
        state_file = getattr(backend, "state_file", None)
        ours = bool(state_file) and Path(state_file).exists()
        found += domain_findings(backend.state(), ours)
    return found


def certain(found: list[ManagerFinding], where: str) -> list[ManagerFinding]:
    """The findings to refuse for; the uncertain ones are logged as warnings here."""
    for f in found:
        if not f.certain:
            log.warning("%s: %s", where, f.line())
    return [f for f in found if f.certain]


def refusal(found: list[ManagerFinding], where: str) -> str:
    """The one-line refusal for the CLI."""
    return (f"other frequency managers are active on {where}: " + "; ".join(f.line() for f in found)
            + ". Stop them (e.g. `systemctl stop tuned`) or proceed anyway with --allow-other-managers "
            "(config key allow_other_managers: true)")
