"""One fixed sequence of sysfs writes, run against a real kernel (inside a QEMU guest) and against
the virtual board's kernel, so the two can be compared value by value.

Plain functions over ``read(path) -> str`` and ``write(path, value)`` (raising OSError), no
project imports: the same code runs in the guest against the real /sys and in the host's tests
against ``VirtualKernel.read``/``write``. After each write it records what a read straight away
shows (a real kernel may still show the old values) and what it shows once settled."""

from __future__ import annotations

import time

SETTLE_S = 0.1


def _steps_cpufreq(d: str, table: list[int], governors: list[str]) -> list[tuple[str, str]]:
    lo, hi, mid = table[0], table[-1], table[len(table) // 2]
    steps: list[tuple[str, str]] = []
    if "userspace" in governors:
        steps += [(f"{d}/scaling_governor", "userspace"),
                  (f"{d}/scaling_setspeed", str(table[1])),
                  (f"{d}/scaling_setspeed", str(table[1] + 1)),  # between entries: rounds up
                  (f"{d}/scaling_setspeed", str(hi + 1000)),  # above the max
                  (f"{d}/scaling_setspeed", str(max(lo - 1000, 1))),  # below the min
                  (f"{d}/scaling_setspeed", "fast"),  # not a number
                  (f"{d}/scaling_max_freq", str(mid)),  # a limit below the setpoint
                  (f"{d}/scaling_max_freq", str(hi))]
    pin = "performance" if "performance" in governors else governors[0]
    steps += [(f"{d}/scaling_governor", pin),
              (f"{d}/scaling_max_freq", str(mid)),
              (f"{d}/scaling_min_freq", str(mid)),  # pinned
              (f"{d}/scaling_max_freq", str(table[1])),  # max below min: who wins
              (f"{d}/scaling_min_freq", str(hi + 5)),  # min above max and above the hardware
              (f"{d}/scaling_max_freq", str(mid + 1)),  # between entries
              (f"{d}/scaling_min_freq", str(max(lo - 5, 1))),
              (f"{d}/scaling_max_freq", str(hi + 100_000)),  # above the hardware max
              (f"{d}/scaling_min_freq", "x1")]
    return steps


def _steps_devfreq(d: str, table: list[int], governors: list[str]) -> list[tuple[str, str]]:
    lo, hi, mid = table[0], table[-1], table[len(table) // 2]
    steps: list[tuple[str, str]] = []
    if "userspace" in governors:
        steps += [(f"{d}/governor", "userspace"),
                  (f"{d}/userspace/set_freq", str(mid)),
                  (f"{d}/userspace/set_freq", str(lo + 1)),  # between entries
                  (f"{d}/userspace/set_freq", str(hi * 2)),  # above the max
                  (f"{d}/max_freq", str(mid)),  # a limit below the request
                  (f"{d}/min_freq", str(hi)),  # min above max
                  (f"{d}/min_freq", str(lo)),
                  (f"{d}/max_freq", str(hi)),
                  (f"{d}/userspace/set_freq", str(lo))]
    steps += [(f"{d}/governor", "no_such_governor")]
    return steps


CPUFREQ_SHOWN = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_cur_freq",
                 "cpuinfo_cur_freq", "scaling_setspeed")
DEVFREQ_SHOWN = ("governor", "min_freq", "max_freq", "cur_freq", "target_freq", "userspace/set_freq")


def _transitions(read, d: str, cpufreq: bool) -> int | None:
    """The kernel's count of clock changes in the domain (cpufreq's stats/total_trans, devfreq's
    trans_stat), or None where the kernel keeps none: it tells whether a dynamic governor moved
    the clock between two moments."""
    try:
        if cpufreq:
            return int(read(f"{d}/stats/total_trans").strip())
        for line in read(f"{d}/trans_stat").splitlines():
            if line.strip().lower().startswith("total transition"):
                return int(line.split(":")[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _snapshot(read, d: str, names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = read(f"{d}/{n}").strip()
        except OSError:
            out[n] = None
    return out


def run_sequence(read, write, domains: list[dict]) -> list[dict]:
    """``domains``: ``{"kind": "cpufreq"|"devfreq", "dir": path, "table": [...], "governors": [...]}``.
    Returns one record per write: the value, the errno (0 when accepted), the files read at once
    and once settled; a domain's first record also has ``before``, what the domain showed before
    its first write (a dynamic boot governor such as schedutil leaves its clock wherever the load
    had it, and the first step, switching to userspace, keeps that clock: the other side must start
    from the same one), and ``moved_before_first_write``: whether the kernel counted a clock change
    between that snapshot and the first write's effect (None where it keeps no count). When it did,
    the clock the switch kept is not the one ``before`` shows (CI saw schedutil move it in that
    window on x86_64)."""
    records = []
    for dom in domains:
        cpufreq = dom["kind"] == "cpufreq"
        steps = (_steps_cpufreq if cpufreq else _steps_devfreq)(dom["dir"], dom["table"], dom["governors"])
        names = CPUFREQ_SHOWN if cpufreq else DEVFREQ_SHOWN
        moves_before = _transitions(read, dom["dir"], cpufreq)
        before = _snapshot(read, dom["dir"], names)
        for path, value in steps:
            err = 0
            try:
                write(path, value)
            except OSError as exc:
                err = exc.errno or -1
            if before is not None:
                moves_after = _transitions(read, dom["dir"], cpufreq)
            at_once = _snapshot(read, dom["dir"], names)
            time.sleep(SETTLE_S)
            settled = _snapshot(read, dom["dir"], names)
            records.append({"kind": dom["kind"], "attr": path[len(dom["dir"]) + 1:], "value": value,
                            "errno": err, "at_once": at_once, "settled": settled})
            if before is not None:
                records[-1]["before"], before = before, None
                records[-1]["moved_before_first_write"] = (
                    None if moves_before is None or moves_after is None else moves_after != moves_before)
    return records


def resynced(r: dict, name: str, got: str | None) -> bool:
    """Whether the real kernel's settled ``name`` is cpufreq's core putting the policy's frequency
    back to the hardware's, and ``got`` the state before it. Under the userspace governor
    scaling_setspeed shows policy->cur; a read of cpuinfo_cur_freq that finds the driver's clock
    apart from it sets policy->cur to the clock ("out of sync"). Whether such a read lands while a
    change is still in flight or after it is timing: CI's arm64 guest once settled a setspeed of
    1000001 (rounded up to 1500000, shown at once) at the 500000 its clock still read, the run
    before at the request. Either state is the real kernel's."""
    if r["kind"] != "cpufreq" or name != "scaling_setspeed":
        return False
    settled, at_once = r["settled"], r["at_once"]
    return (settled.get("scaling_setspeed") == settled.get("cpuinfo_cur_freq") != at_once.get("scaling_setspeed")
            and got == at_once.get("scaling_setspeed"))


def differences(real: list[dict], virtual: list[dict], ignore: tuple[str, ...] = ()) -> list[str]:
    """Step by step, where the virtual kernel's answer differs from the real one's."""
    out = []
    for k, (r, v) in enumerate(zip(real, virtual, strict=True)):
        where = f"step {k} ({r['kind']} {r['attr']} = {r['value']})"
        if (r["errno"] == 0) != (v["errno"] == 0):
            out.append(f"{where}: real errno {r['errno']}, virtual errno {v['errno']}")
        for name, value in r["settled"].items():
            if name in ignore:
                continue
            got = v["settled"].get(name)
            if value != got and not resynced(r, name, got):
                out.append(f"{where}: {name} real {value!r}, virtual {got!r}")
    return out
