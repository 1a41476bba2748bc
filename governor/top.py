"""`dvfs-gov top`: a live view of a running governor daemon, read from its status over the socket.

Each refresh asks the daemon for its status once and turns frame counts into fps by the difference
from the previous refresh (the daemon keeps counts, not rates, so that any number of viewers can
watch without it keeping per-viewer state). In a terminal the view is redrawn in place with plain
ANSI escapes (home + clear), which every SSH terminal understands; piped, it prints one line per
refresh so that logs and scripts get something greppable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

CLEAR_HOME = "\x1b[H\x1b[2J"


class AppRates:
    """fps per app from the frame counts of two consecutive status answers."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, int]] | None = None

    def update(self, now_s: float, apps: dict[str, dict[str, Any]]) -> dict[str, float | None]:
        counts = {a: int(s.get("frames", 0)) for a, s in apps.items()}
        rates: dict[str, float | None] = {}
        if self._last is None:
            rates = dict.fromkeys(counts)
        else:
            t0, before = self._last
            dt_s = now_s - t0
            for app, n in counts.items():
                rates[app] = round((n - before.get(app, 0)) / dt_s, 1) if dt_s > 0 else None
        self._last = (now_s, counts)
        return rates


def snapshot(status: dict[str, Any], fps: dict[str, float | None]) -> dict[str, Any]:
    """One refresh as plain data (what `--json` prints, and what both text views are drawn from)."""
    domains = {}
    if status.get("cpu_khz") is not None:
        domains["cpu"] = {"khz": status["cpu_khz"]}
    if status.get("gpu_hz") is not None:
        domains["gpu"] = {"hz": status["gpu_hz"]}
    if status.get("mem_hz") is not None:
        domains["mem"] = {"hz": status["mem_hz"], "unit": status.get("mem_unit", "Hz")}
    apps = {}
    for app, a in status.get("apps", {}).items():
        apps[app] = {"fps": fps.get(app), "frames": a.get("frames", 0), "misses": a.get("misses", 0),
                     "infeasible": a.get("infeasible", 0), "failed": a.get("failed", 0),
                     "corrections": a.get("corrections", {})}
    out = {"time": round(time.time(), 3), "pid": status.get("pid"), "backend": status.get("backend"),
           "backend_connected": status.get("backend_connected"), "domains": domains,
           "capped": bool(status.get("capped")), "released": bool(status.get("released")),
           "in_flight": status.get("in_flight", 0), "writes": status.get("writes"), "apps": apps,
           "models": {m: {"correction": v.get("correction"), "host_slowdown": v.get("host_slowdown"),
                          "samples": v.get("samples")} for m, v in status.get("models", {}).items()}}
    if status.get("power_mw") is not None:  # shown only where the board has power rails
        out["power_mw"] = status["power_mw"]
        out["power_rail"] = status.get("power_rail")
    if status.get("energy_per_frame_mj") is not None:
        out["energy_per_frame_mj"] = status["energy_per_frame_mj"]
    learning = status.get("power_learning")
    if learning:  # power scales learned from the rail (governor/power_online.py)
        out["power_learning"] = {k: learning.get(k) for k in ("enabled", "power_scales", "offset_mw", "samples",
                                                               "applied_fits", "note") if k in learning}
        if learning.get("fit"):
            out["power_learning"]["fit_rel_rms"] = learning["fit"].get("fit_rel_rms")
    return out


def _learning(snap: dict[str, Any]) -> str:
    """The power scales in force, or why none are ('' on a board without a rail)."""
    pl = snap.get("power_learning")
    if not pl:
        return ""
    if not pl.get("enabled"):
        return "power learning off"
    if not pl.get("applied_fits"):
        return f"power scales: learning ({pl.get('samples', 0)} intervals)"
    scales = " ".join(f"{t} x{v:.2f}" for t, v in pl["power_scales"].items())
    rms = pl.get("fit_rel_rms")
    return (f"power scales: {scales}, offset {pl.get('offset_mw', 0):g} mW"
            + (f" (fit error {100 * rms:.1f}%, {pl.get('samples')} intervals)" if rms is not None else ""))


def _power(snap: dict[str, Any]) -> str:
    """Measured power (and energy per frame) where the board has rails: '' otherwise."""
    if "power_mw" not in snap:
        return ""
    per_frame = f", {snap['energy_per_frame_mj']} mJ/frame" if "energy_per_frame_mj" in snap else ""
    return f"power {snap['power_mw']} mW{per_frame}"


def mem_level(value: float, unit: str) -> str:
    """A memory level for people: MHz for a clock, as is for a bus-bandwidth vote (MB/s)."""
    return f"{value / 1e6:.0f} MHz" if unit == "Hz" else f"{value:g} {unit}"


def _freqs(snap: dict[str, Any]) -> str:
    parts = []
    if "cpu" in snap["domains"]:
        parts.append(f"cpu {snap['domains']['cpu']['khz'] / 1e3:.0f} MHz")
    if "gpu" in snap["domains"]:
        parts.append(f"gpu {snap['domains']['gpu']['hz'] / 1e6:.0f} MHz")
    if "mem" in snap["domains"]:
        parts.append(f"mem {mem_level(snap['domains']['mem']['hz'], snap['domains']['mem']['unit'])}")
    return ", ".join(parts) or "no domain taken yet"


def _fps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plain_line(snap: dict[str, Any]) -> str:
    """One line per refresh for a pipe or a log."""
    stamp = time.strftime("%H:%M:%S", time.localtime(snap["time"]))
    flags = "".join([" capped" if snap["capped"] else "", " released" if snap["released"] else "",
                     "" if snap["backend_connected"] is not False else " DISCONNECTED"])
    power = f" {_power(snap)}" if "power_mw" in snap else ""
    if snap.get("power_learning"):
        power += f"; {_learning(snap)}"
    apps = "; ".join(f"{app} fps {_fps(a['fps'])} frames {a['frames']} misses {a['misses']} "
                     f"infeasible {a['infeasible']} failed {a['failed']}" for app, a in snap["apps"].items())
    writes = f" writes {snap['writes']}" if snap.get("writes") is not None else ""
    return f"{stamp} {_freqs(snap)}{flags}{writes}{power} | {apps or 'no apps'}"


def screen(snap: dict[str, Any], source: str) -> str:
    """The full view for a terminal (the caller clears and homes the cursor first)."""
    lines = [f"dvfs-gov top - governor pid {snap['pid']} on {source}, backend {snap['backend']}"
             f"{'' if snap['backend_connected'] is not False else ' (DISCONNECTED)'}",
             f"frequencies: {_freqs(snap)}   caps: {'thermal/user cap in force' if snap['capped'] else 'none'}"
             f"{'   (released: domains handed back while idle)' if snap['released'] else ''}"
             + (f"   measured {_power(snap)} ({snap.get('power_rail')})" if "power_mw" in snap else ""),
             *([_learning(snap)] if snap.get("power_learning") else []),
             f"frames in flight: {snap['in_flight']}"
             + (f"   points written: {snap['writes']}" if snap.get("writes") is not None else ""), "",
             f"{'APP':16s} {'FPS':>7s} {'FRAMES':>8s} {'MISSES':>7s} {'INFEAS':>7s} {'FAILED':>7s}  CORRECTION"]
    for app, a in snap["apps"].items():
        corr = ", ".join(f"{m} x{c}" for m, c in a["corrections"].items()) or "-"
        lines.append(f"{app[:16]:16s} {_fps(a['fps']):>7s} {a['frames']:8d} {a['misses']:7d} "
                     f"{a['infeasible']:7d} {a['failed']:7d}  {corr}")
    if not snap["apps"]:
        lines.append("(no app has asked for a frame yet)")
    lines += ["", f"{'MODEL':16s} {'CORRECTION':>10s} {'HOST':>6s} {'SAMPLES':>8s}"]
    for m, v in snap["models"].items():
        lines.append(f"{m[:16]:16s} {'x' + str(v['correction']):>10s} {'x' + str(v['host_slowdown']):>6s} "
                     f"{v['samples'] if v['samples'] is not None else '-':>8}")
    lines.append("")
    lines.append("Ctrl-C to quit")
    return "\n".join(lines)


def watch(fetch: Callable[[], dict[str, Any]], emit: Callable[[str], None], source: str, interval_s: float,
          count: int | None, mode: str, sleep: Callable[[float], None] = time.sleep) -> int:
    """Refresh ``count`` times (forever when None); ``mode`` is 'tty', 'plain' or 'json'. Returns refreshes."""
    rates, done = AppRates(), 0
    while count is None or done < count:
        if done:
            sleep(interval_s)
        status = fetch()
        snap = snapshot(status, rates.update(time.monotonic(), status.get("apps", {})))
        if mode == "json":
            emit(json.dumps(snap))
        elif mode == "tty":
            emit(CLEAR_HOME + screen(snap, source))
        else:
            emit(plain_line(snap))
        done += 1
    return done
