"""`dvfs-gov plot`: pictures of what the estimator predicts, what a governed run did, and what a
profile measured, drawn with matplotlib (an optional extra: ``pip install 'deadline-dvfs[plot]'``).

Figures are built with matplotlib's object API (``Figure`` + the Agg canvas), never pyplot, so
nothing depends on a display or on a global backend. Every drawn element of interest carries a
``gid`` (an ``id`` in SVG output), so what a figure contains can be checked in the file itself.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dvfs_schema.board import BoardConfig
from estimator.model import Estimator
from estimator.profile import Profile
from governor.recording import RunRecord

INSTALL_HINT = "pip install 'deadline-dvfs[plot]'"
FORMATS = ("png", "svg")


class PlotError(ValueError):
    """A plot that cannot be drawn (missing extra, bad output name, nothing to draw)."""


@dataclass
class PlotSummary:
    """What was drawn, for the CLI's one-line report and for tests."""

    path: Path
    panels: int
    elements: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(f"plotting needs matplotlib: {INSTALL_HINT}") from None
    return matplotlib, Figure, FigureCanvasAgg


def _check_output(out: str | Path) -> Path:
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"{out}: the output's extension picks the format; allowed: .png, .svg")
    return out


def _save(fig, out: Path) -> None:
    matplotlib, _, FigureCanvasAgg = _matplotlib()
    FigureCanvasAgg(fig)
    # text stays text in SVG (searchable, and countable by tests)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(out, format=out.suffix.lower().lstrip("."), dpi=110, bbox_inches="tight")


# ---- (a) the estimator's grid ----------------------------------------------------------------------
class Pick(NamedTuple):
    """The governor's decision for one frame: the point (``mem_hz`` None without a memory domain)
    and whether it meets the deadline by the prediction."""

    cpu_khz: int
    gpu_hz: int
    feasible: bool
    mem_hz: int | None = None


def governor_pick(est: Estimator, board: BoardConfig, deadline_ms: float,
                  context_len: int | None) -> Pick:
    """The point the governor itself picks for one frame from a fresh start: an in-process Governor
    on a throwaway virtual board of ``board``, so the plot shows the real decision code's answer."""
    from governor.core import Governor
    from sysfs_backends.virtual.board import VirtualBoard

    with tempfile.TemporaryDirectory(prefix="dvfs-plot-") as tmp:
        vb = VirtualBoard(Path(tmp) / "board", board)
        gov = Governor(vb.backend(Path(tmp) / "saved.json"), board, {est.data.model: est})
        with gov:
            d = gov.before_frame(est.data.model, deadline_ms, context_len, app="plot")
            gov.after_frame(d.frame, d.predicted_ms)
    return Pick(d.cpu_khz, d.gpu_hz, d.feasible, d.mem_hz)


def _mem_label(mem_hz: float, unit: str) -> str:
    """A memory level as shown in a panel's title: MHz for a clock, MB/s for a bandwidth vote."""
    return f"{mem_hz:g} MB/s" if unit == "MB/s" else f"{mem_hz / 1e6:g} MHz"


def plot_grid(est: Estimator, deadline_ms: float, out: str | Path, context_len: int | None = None,
              board: BoardConfig | None = None) -> PlotSummary:
    """Heatmaps of predicted latency (and energy, with a board that has power tables) over the
    (cpu, gpu) grid, the deadline's contour on each, and the governor's pick (needs ``board``).

    With a memory domain there is one column of panels per memory level (a 3-D grid does not fit one
    heatmap, and the memory level is the third choice the governor makes), latency above energy,
    each quantity on one colour scale across the levels so that panels compare; the pick is marked
    only on the panels of the memory level it chose."""
    out = _check_output(out)
    _, Figure, _ = _matplotlib()
    cpu, gpu = np.array(est.data.cpu_khz), np.array(est.data.gpu_hz)
    mem = np.array(est.data.mem_hz) if est.data.mem_hz else None
    n_mem = len(mem) if mem is not None else 1
    shape = (len(cpu), len(gpu), n_mem)  # grid_points are CPU-major over (cpu, gpu[, mem])
    grid = est.grid(context_len)
    latency = grid.latency_ms.reshape(shape)
    metrics = [("predicted latency (ms)", latency, "viridis")]
    notes = []
    if board is not None and board.has_power_tables:
        energy = board.frame_energy_j(grid.cpu_khz, grid.gpu_hz, grid.host_busy_ms * 1e6, grid.gpu_busy_ms * 1e6,
                                      grid.latency_ms * 1e6, mem_hz=grid.mem_hz) * 1e3
        metrics.append(("predicted energy per frame (mJ)", energy.reshape(shape), "magma"))
    else:
        notes.append("no energy panel: give --board with power tables")
    pick = None
    if board is not None:
        pick = governor_pick(est, board, deadline_ms, context_len)
    else:
        notes.append("no governor pick: give --board")
    mem_unit = board.memory.unit if board is not None and board.memory is not None else "Hz"
    fig = Figure(figsize=(6.0 * n_mem, 5.0 * len(metrics)) if mem is not None else (6.0 * len(metrics), 5.0))
    ctx = f", context {context_len}" if context_len is not None else ""
    fig.suptitle(f"{est.data.model} on {est.data.device}: deadline {deadline_ms:g} ms{ctx}")
    contours = picks = 0
    n = 0
    for row, (title, values, cmap) in enumerate(metrics):
        for k in range(n_mem):
            # one row per quantity, one column per memory level (a single row without memory)
            ax = (fig.add_subplot(len(metrics), n_mem, row * n_mem + k + 1) if mem is not None
                  else fig.add_subplot(1, len(metrics), row + 1))
            lat = latency[:, :, k]
            # the tables are not evenly spaced: cells on table indices, labelled with the frequencies
            img = ax.imshow(values[:, :, k].T, origin="lower", aspect="auto", cmap=cmap,
                            vmin=float(values.min()), vmax=float(values.max()))
            img.set_gid(f"heatmap-{n}")
            fig.colorbar(img, ax=ax, label=title)
            if lat.min() <= deadline_ms <= lat.max() and min(lat.shape) > 1:
                cs = ax.contour(lat.T, levels=[deadline_ms], colors="white", linewidths=2.0)
                cs.set_gid(f"deadline-contour-{n}")
                ax.clabel(cs, fmt={deadline_ms: f"{deadline_ms:g} ms"}, fontsize=8)
                contours += 1
            if pick is not None and (mem is None or pick.mem_hz == int(mem[k])):
                i, j = int(np.searchsorted(cpu, pick.cpu_khz)), int(np.searchsorted(gpu, pick.gpu_hz))
                label = f"governor: {pick.cpu_khz // 1000} MHz / {pick.gpu_hz // 1_000_000} MHz"
                if pick.mem_hz is not None:
                    label += f" / mem {_mem_label(pick.mem_hz, mem_unit)}"
                marker = ax.plot([i], [j], marker="*", markersize=18, color="red", markeredgecolor="black",
                                 linestyle="none", label=label + ("" if pick.feasible else " (infeasible)"))[0]
                marker.set_gid(f"governor-pick-{n}")
                ax.legend(loc="upper right", fontsize=8)
                picks += 1
            ax.set_xticks(range(len(cpu)), [f"{c // 1000}" for c in cpu], rotation=90, fontsize=7)
            ax.set_yticks(range(len(gpu)), [f"{g // 1_000_000}" for g in gpu], fontsize=7)
            ax.set_xlabel("CPU frequency (MHz)")
            ax.set_ylabel("GPU frequency (MHz)")
            ax.set_title(title if mem is None else f"{title}\nmemory {_mem_label(mem[k], mem_unit)}")
            n += 1
    _save(fig, out)
    return PlotSummary(out, n, {"contours": contours, "picks": picks, "memory_levels": n_mem if mem is not None
                                else 0}, notes)


# ---- (b) a governed run -----------------------------------------------------------------------------
def _cap_spans(record: RunRecord) -> list[tuple[float, float]]:
    """Time intervals during which frames reported a cap, merged."""
    spans: list[tuple[float, float]] = []
    frames = sorted(record.frames, key=lambda f: f.t_s)
    for a, b in zip(frames, [*frames[1:], None], strict=True):
        if not a.capped:
            continue
        end = b.t_s if b is not None else a.t_s + a.latency_ms / 1e3
        if spans and spans[-1][1] >= a.t_s - 1e-9:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((a.t_s, end))
    return spans


def plot_run(record: RunRecord, out: str | Path) -> PlotSummary:
    """Timeline of a run: frequencies per domain (memory included), each frame's latency against its deadline (misses
    marked, one panel per app), caps shaded, measured power where the record has it."""
    out = _check_output(out)
    _, Figure, _ = _matplotlib()
    frames = sorted(record.frames, key=lambda f: f.t_s)
    if not frames:
        raise PlotError("the run record has no frames")
    apps = sorted({f.app for f in frames})
    # memory: a panel where frames recorded its level (records from before it was recorded have none)
    domains = [d for d in record.header.domains if d.name in ("cpu", "gpu")
               or (d.name == "mem" and any(f.mem_hz is not None for f in frames))]
    power, per_frame = _measured_power(record, frames)
    has_power, has_energy = bool(power), bool(per_frame)
    n_panels = len(domains) + len(apps) + has_power + has_energy
    fig = Figure(figsize=(11.0, 2.2 * n_panels + 0.6))
    fig.suptitle(f"governed run on {record.header.board} ({len(frames)} frames)")
    axes = [fig.add_subplot(n_panels, 1, 1)]
    for k in range(2, n_panels + 1):
        axes.append(fig.add_subplot(n_panels, 1, k, sharex=axes[0]))
    spans = _cap_spans(record)
    t = np.array([f.t_s for f in frames])
    counts = {"misses": 0, "frames": len(frames), "cap_spans": len(spans)}
    ax_i = 0
    for d in domains:
        ax = axes[ax_i]
        ax_i += 1
        # MHz for clocks; a bus-bandwidth vote (unit MB/s) is drawn as is
        scale, shown = {"kHz": (1e3, "MHz"), "Hz": (1e6, "MHz")}.get(d.unit, (1.0, d.unit))
        field_of = {"cpu": "cpu_khz", "gpu": "gpu_hz", "mem": "mem_hz"}[d.name]
        values = np.array([np.nan if getattr(f, field_of) is None else getattr(f, field_of) / scale
                           for f in frames])  # a gap where a frame has no value
        colour = {"cpu": "tab:blue", "gpu": "tab:green", "mem": "tab:purple"}[d.name]
        line = ax.step(t, values, where="post", color=colour)[0]
        line.set_gid(f"freq-{d.name}")
        ax.set_ylabel(f"{d.name.upper()} {shown}")
        ax.set_ylim(0, max(d.frequencies) / scale * 1.05)
    for app in apps:
        ax = axes[ax_i]
        ax_i += 1
        mine = [f for f in frames if f.app == app]
        ta = np.array([f.t_s for f in mine])
        lat = np.array([f.latency_ms for f in mine])
        ax.plot(ta, lat, ".", markersize=3, color="tab:blue", label="latency")[0].set_gid(f"latency-{app}")
        ax.plot(ta, [f.predicted_ms for f in mine], "-", linewidth=0.8, color="tab:gray", alpha=0.8,
                label="predicted")
        ax.step(ta, [f.deadline_ms for f in mine], where="post", color="black", linestyle="--",
                label="deadline")[0].set_gid(f"deadline-{app}")
        missed = [f for f in mine if f.missed]
        counts["misses"] += len(missed)
        if missed:
            ax.plot([f.t_s for f in missed], [f.latency_ms for f in missed], "x", color="red", markersize=7,
                    label=f"missed ({len(missed)})")[0].set_gid(f"misses-{app}")
        ax.set_ylabel(f"{app}\nlatency (ms)")
        ax.legend(loc="upper right", fontsize=7, ncols=4)
    if has_power:
        ax = axes[ax_i]
        ax_i += 1
        rail = f" ({record.power[0].rail})" if record.power else ""
        ax.step(*zip(*power, strict=True), where="post", color="tab:orange")[0].set_gid("power")
        ax.set_ylabel(f"measured power{rail}\n(W)")
        ax.set_ylim(bottom=0)
        counts["power_samples"] = len(power)
    if has_energy:
        ax = axes[ax_i]
        # each value over the interval that ends at its sample: drawn from the interval's start
        ax.step(*zip(*per_frame, strict=True), where="post", color="tab:brown")[0].set_gid("energy-per-frame")
        ax.set_ylabel("measured energy\nper frame (mJ)")
        ax.set_ylim(bottom=0)
    for ax in axes:
        for n, (a, b) in enumerate(spans):
            ax.axvspan(a, b, color="tab:red", alpha=0.12, linewidth=0,
                       label="capped" if n == 0 and ax is axes[0] else None).set_gid(f"cap-{n}")
    if spans:
        axes[0].legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("time (s)")
    _save(fig, out)
    return PlotSummary(out, n_panels, counts)


def _measured_power(record: RunRecord, frames: list) -> tuple[list, list]:
    """(t_s, W) of the board rail's samples, else the frames' own ``power_w`` (older records); and
    (t_s, mJ) of energy per frame over each sampled interval that had frames."""
    if record.power:
        power = [(p.t_s, p.power_w) for p in record.power if p.power_w is not None]
    else:
        power = [(f.t_s, f.power_w) for f in frames if f.power_w is not None]
    per_frame = [(p.t_s - (p.interval_s or 0.0), p.energy_j / p.frames * 1e3) for p in record.power
                 if p.energy_j is not None and p.frames]
    return power, per_frame


# ---- (c) one profiled run ---------------------------------------------------------------------------
def bubbles_ns(layers, latency_ns: int | None = None) -> list[tuple[int, int]]:
    """Device idle gaps in a run: every interval with no kernel running (the first launch, launch-bound
    stretches, dispatch delays, host fallbacks), up to ``latency_ns`` when given. Their total is the
    estimator's ``bubble_ms`` (latency - device busy)."""
    spans = sorted((x.gpu_start_ns, x.gpu_end_ns) for x in layers if x.kind == "gpu")
    gaps = []
    free = 0
    for start, end in spans:
        if start > free:
            gaps.append((free, start))
        free = max(free, end)
    if latency_ns is not None and latency_ns > free:
        gaps.append((free, latency_ns))
    return gaps


def plot_profile(profile: Profile, out: str | Path, run: int = 0) -> PlotSummary:
    """Per-layer Gantt of one run: a host lane (launches and host operators) and a device lane
    (kernels), with the device's idle gaps (bubbles) shaded."""
    out = _check_output(out)
    _, Figure, _ = _matplotlib()
    if not 0 <= run < len(profile.runs):
        raise PlotError(f"--run {run}: the profile has runs 0..{len(profile.runs) - 1}")
    r = profile.runs[run]
    us = 1e-3
    fig = Figure(figsize=(12.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ctx = f", context {r.context_len}" if r.context_len is not None else ""
    ax.set_title(f"{profile.model} on {profile.device}, run {run}: cpu {r.cpu_khz // 1000} MHz, "
                 f"gpu {r.gpu_hz // 1_000_000} MHz{ctx}, {r.latency_ns / 1e6:.3f} ms")
    colours = ["tab:blue", "tab:cyan"]
    host_bars = device_bars = 0
    for i, x in enumerate(r.layers):
        colour = colours[i % 2] if x.kind == "gpu" else "tab:orange"
        bar = ax.broken_barh([(x.cpu_start_ns * us, max((x.cpu_end_ns - x.cpu_start_ns) * us, 1e-3))], (1.1, 0.8),
                             facecolors=colour, edgecolor="black", linewidth=0.3)
        bar.set_gid(f"host-{i}")
        host_bars += 1
        if x.kind == "gpu":
            bar = ax.broken_barh([(x.gpu_start_ns * us, max((x.gpu_end_ns - x.gpu_start_ns) * us, 1e-3))],
                                 (0.1, 0.8), facecolors=colour, edgecolor="black", linewidth=0.3)
            bar.set_gid(f"device-{i}")
            device_bars += 1
    gaps = bubbles_ns(r.layers, r.latency_ns)
    if gaps:
        bar = ax.broken_barh([(a * us, (b - a) * us) for a, b in gaps], (0.1, 0.8), facecolors="none",
                             edgecolor="tab:red", hatch="///", linewidth=0.6)
        bar.set_gid("bubbles")
    ax.set_yticks([0.5, 1.5], ["device", "host"])
    ax.set_xlabel("time since the run started (us)")
    ax.set_xlim(0, r.latency_ns * us)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="tab:blue", label="GPU layer (launch / kernel)"),
                       Patch(facecolor="tab:orange", label="host fallback"),
                       Patch(facecolor="none", edgecolor="tab:red", hatch="///", label=f"bubble ({len(gaps)})")],
              loc="upper right", fontsize=7, ncols=3)
    _save(fig, out)
    return PlotSummary(out, 1, {"host_bars": host_bars, "device_bars": device_bars, "bubbles": len(gaps)})
