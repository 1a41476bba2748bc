"""`dvfs-gov`: the command line. Commands parse arguments, call the library and print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from estimator.planner import plan_grid, plan_points
from estimator.profile import ProfileError
from governor import storage
from governor.configs import ConfigError, available, load_board, load_model_spec


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def backend_options(fn):
    """--backend/--sysfs-root/--virtual-root/--state-file, shared by commands that touch a board."""
    fn = click.option("--state-file", type=click.Path(dir_okay=False),
                      help="where original settings are saved (default under $XDG_STATE_HOME)")(fn)
    fn = click.option("--virtual-root", type=click.Path(file_okay=False),
                      help="virtual board tree (created if missing)")(fn)
    fn = click.option("--sysfs-root", default="/", show_default=True,
                      help="root of a tree laid out like /sys (linux backend)")(fn)
    fn = click.option("--adb", "adb_address", help="host:port of the phone (android backend)")(fn)
    fn = click.option("--backend", "backend_kind", default="virtual", show_default=True,
                      help="linux, virtual, android, or a registered backend")(fn)
    return fn


def open_board_backend(board: str, backend_kind: str, sysfs_root: str, virtual_root: str | None,
                       state_file: str | None, adb_address: str | None):
    from sysfs_backends.registry import AdbOptions, BackendSpec, open_backend

    cfg = load_board(board)
    spec = BackendSpec(kind=backend_kind, sysfs_root=sysfs_root, virtual_root=virtual_root,
                       state_file=state_file, adb=AdbOptions(address=adb_address))
    return cfg, open_backend(cfg, spec)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deadline-dvfs")
def main() -> None:
    """Deadline-aware CPU/GPU DVFS for DNN and small-language-model inference."""


# ---- estimator ---------------------------------------------------------------------------
@main.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the fitted estimator (JSON)")
def fit(profile: str, output: str) -> None:
    """Fit the latency estimator to PROFILE (format deadline-dvfs.profile/1)."""
    from estimator.model import Estimator

    try:
        prof = storage.load_profile(profile)
        est = Estimator.fit(prof)
    except (ProfileError, ValueError) as exc:
        _fail(str(exc))
    storage.write_atomic(output, est.to_json())
    t = est.data.training
    click.echo(
        f"fitted {prof.model} on {prof.device}: {len(est.data.layer_names)} layers, "
        f"{t['runs']} runs at {len(t['points'])} frequency {'pairs' if est.data.gpu_hz else 'points (CPU only)'}, "
        f"error on the profiled runs {t['fit_mape_pct']}% -> {output}"
    )


@main.command()
@click.argument("estimator_file", type=click.Path(dir_okay=False))
@click.option("--cpu-khz", type=int, help="CPU frequency (kHz)")
@click.option("--gpu-hz", type=int, help="GPU frequency (Hz)")
@click.option("--context-len", type=int, help="tokens in the context (language models)")
@click.option("--grid", is_flag=True, help="every pair of the frequency tables")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def estimate(estimator_file: str, cpu_khz: int | None, gpu_hz: int | None,
             context_len: int | None, grid: bool, as_json: bool) -> None:
    """Predict latency and its breakdown at one frequency pair or over the grid."""
    try:
        est = storage.load_estimator(estimator_file)
    except ValueError as exc:
        _fail(str(exc))
    if est.is_language_model and context_len is None:
        _fail(f"{est.data.model} is a language model: give --context-len "
              f"(profiled at {est.data.profiled_context_len})")
    if not est.is_language_model and context_len is not None:
        _fail(f"{est.data.model} has no context: drop --context-len")
    has_gpu = bool(est.data.gpu_hz)
    if not has_gpu and gpu_hz is not None:
        _fail(f"{estimator_file}: {est.data.model} was profiled on a board without a GPU "
              "(frequencies.gpu_hz is []): drop --gpu-hz")
    if grid:
        if cpu_khz is not None or gpu_hz is not None:
            _fail("--grid covers every point: drop --cpu-khz/--gpu-hz")
        rows = est.grid(context_len).rows()
    else:
        if cpu_khz is None or (has_gpu and gpu_hz is None):
            _fail("give --cpu-khz and --gpu-hz, or --grid" if has_gpu else "give --cpu-khz, or --grid")
        notes = []
        asked = [("cpu-khz", cpu_khz, est.data.cpu_khz)]
        if has_gpu:
            asked.append(("gpu-hz", gpu_hz, est.data.gpu_hz))
        for what, value, table in asked:
            if value <= 0:
                _fail(f"--{what} must be positive")
            if not table[0] <= value <= table[-1]:
                notes.append(f"--{what} {value} is outside the profiled table "
                             f"[{table[0]}, {table[-1]}]: extrapolated")
        for note in notes:
            click.echo(f"warning: {note}", err=True)
        rows = est.breakdown(cpu_khz, gpu_hz, context_len).rows()
    if context_len is not None:
        for row in rows:
            row["context_len"] = context_len
    if as_json:
        click.echo(json.dumps(rows if grid else rows[0]))
        return
    for row in rows:
        if not has_gpu:
            click.echo(f"cpu {row['cpu_khz']} kHz: {row['latency_ms']:.3f} ms "
                       f"(host busy {row['host_busy_ms']:.3f})")
            continue
        click.echo(
            f"cpu {row['cpu_khz']} kHz, gpu {row['gpu_hz']} Hz: {row['latency_ms']:.3f} ms "
            f"(host busy {row['host_busy_ms']:.3f}, gpu busy {row['gpu_busy_ms']:.3f}, "
            f"overlap {row['overlap_ms']:.3f}, bubbles {row['bubble_ms']:.3f}, "
            f"host waiting {row['host_wait_ms']:.3f})"
        )


def _point_rows(cfg, points: list[tuple[int, ...]]) -> list[dict[str, int]]:
    """Planned points as {cpu_khz, gpu_hz} dicts, naming only the domains the board has."""
    keys = [{"cpu": "cpu_khz", "gpu": "gpu_hz"}[d] for d in cfg.domain_tables]
    return [dict(zip(keys, p, strict=True)) for p in points]


@main.command()
@click.option("--board", required=True, help="board name or YAML path")
@click.option("-n", "--points", default=5, show_default=True, help="pairs to profile")
@click.option("--json", "as_json", is_flag=True)
def plan(board: str, points: int, as_json: bool) -> None:
    """Which (cpu, gpu) pairs to profile on BOARD (default: four corners and the centre); on a
    board without a GPU, which CPU frequencies (both ends, the middle, then the largest gaps)."""
    try:
        cfg = load_board(board)
    except ConfigError as exc:
        _fail(str(exc))
    rows = _point_rows(cfg, plan_grid(list(cfg.domain_tables.values()), points))
    if as_json:
        click.echo(json.dumps(rows))
    else:
        for row in rows:
            click.echo(", ".join(f"{k.split('_')[0]} {v} {'kHz' if k == 'cpu_khz' else 'Hz'}"
                                 for k, v in row.items()))


@main.command()
@click.option("--board", required=True, help="board name or YAML path (needs a simulation section)")
@click.option("--model", "model_name", required=True, help="model name or YAML path")
@click.option("-n", "--points", default=5, show_default=True, help="planned pairs")
@click.option("--repeats", default=3, show_default=True)
@click.option("--context-len", "context_lens", type=int, multiple=True,
              help="context lengths to profile (language models; default from the model)")
@click.option("--seed", default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def simulate(board: str, model_name: str, points: int, repeats: int,
             context_lens: tuple[int, ...], seed: int, output: str) -> None:
    """Profile MODEL on the virtual BOARD (the simulator), writing the shared profile format."""
    from sysfs_backends.virtual.simulator import Simulator

    try:
        cfg, spec = load_board(board), load_model_spec(model_name)
        sim = Simulator(cfg, spec)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    ctx = list(context_lens) or spec.profile_context_len or None
    if spec.kind == "language_model" and not ctx:
        _fail("a language model needs --context-len (at least two values)")
    pairs = plan_grid(list(cfg.domain_tables.values()), points)
    prof = sim.profile(pairs, repeats, ctx, np.random.default_rng(seed))
    storage.write_atomic(output, json.dumps(prof))
    click.echo(f"profiled {spec.name} on virtual {cfg.name}: {len(prof['runs'])} runs at "
               f"{len(pairs)} {'pairs' if cfg.gpu else 'CPU frequencies'} -> {output}")


# ---- governor -----------------------------------------------------------------------------
@main.command()
@click.option("--config", "config_path", required=True, help="governor YAML (name or path)")
@click.option("--socket", "socket_path", help="override the config's socket path")
@click.option("--virtual-root", help="override the virtual board's tree (virtual backend)")
def run(config_path: str, socket_path: str | None, virtual_root: str | None) -> None:
    """Run the governor daemon until SIGTERM/SIGINT; restores the original settings on exit."""
    import logging

    from governor.app import build_governor
    from governor.config import load_governor_config
    from governor.daemon import SocketInUse, run_daemon
    from sysfs_backends.sysfs import BackendError

    try:
        cfg, cfg_dir = load_governor_config(config_path)
        if virtual_root:
            cfg.backend.virtual_root = virtual_root
        logging.basicConfig(level=cfg.log_level.upper(),
                            format="%(asctime)s dvfs-gov[%(process)d] %(levelname)s %(message)s")
        gov = build_governor(cfg, cfg_dir)
        run_daemon(gov, socket_path or cfg.socket)
    except (ConfigError, BackendError, SocketInUse, ValueError, OSError) as exc:
        _fail(str(exc))


@main.command()
@click.option("--board", default="sd888_phone", show_default=True, help="virtual board")
@click.option("--duration", default=20.0, show_default=True, help="seconds of workload")
@click.option("--backend", "backend_kind", type=click.Choice(["virtual", "android"]), default="virtual",
              show_default=True, help="android: drive the virtual phone over ADB (real protocol, loopback)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def demo(board: str, duration: float, backend_kind: str, as_json: bool) -> None:
    """The governor on a virtual board with two apps (camera + assistant); no hardware needed."""
    from governor.demo import format_table, run_demo

    try:
        result = run_demo(board, duration, progress=lambda m: click.echo(m, err=as_json),
                          backend=backend_kind)
    except (ConfigError, RuntimeError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo("")
        click.echo(format_table(result))


@main.command("virtual-adb")
@click.option("--board", default="sd888_phone", show_default=True, help="virtual board to serve")
@click.option("--port", default=5555, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port on 127.0.0.1 (loopback only; 0: any free port)")
@click.option("--virtual-root", type=click.Path(file_okay=False), help="the board's tree (created if missing)")
@click.option("--not-root", is_flag=True, help="the shell is not uid 0 (writes need su)")
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False),
              help="public keys allowed to connect, one per line (adb's adb_keys format, e.g. "
                   "~/.android/adbkey.pub); without it, the first key presented is trusted")
def virtual_adb(board: str, port: int, virtual_root: str | None, not_root: bool, keys_file: str | None) -> None:
    """Serve a virtual phone over ADB (TCP, 127.0.0.1 only) until Ctrl-C or SIGTERM.

    Its shell answers what a phone's shell is asked for cpufreq/devfreq (cat, echo V > FILE, ls,
    getprop, id, su -c) inside the virtual board's tree, never host programs."""
    import signal as _signal
    import threading

    from sysfs_backends.registry import default_virtual_root
    from sysfs_backends.virtual.adb_device import VirtualAdbDevice, load_adb_keys
    from sysfs_backends.virtual.board import VirtualBoard

    # SIGINT/SIGTERM end the serving loop below (a handler, not sigwait: threads started by imports,
    # such as BLAS's, do not block the signals and would otherwise take the default action)
    stop, got = threading.Event(), []

    def _on_signal(signum, _frame) -> None:
        got.append(signum)
        stop.set()

    for signum in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(signum, _on_signal)
    try:
        keys = None
        if keys_file is not None:
            keys = load_adb_keys(keys_file)
        cfg = load_board(board)
        root = Path(virtual_root) if virtual_root else default_virtual_root(cfg.name)
        VirtualBoard(root, cfg)
        with VirtualAdbDevice(root, port=port, root=not not_root, known_keys=keys,
                              on_notice=lambda msg: click.echo(f"virtual-adb: {msg}")) as dev:
            who = f"{len(keys)} key(s) from {keys_file}" if keys else "the first key presented (no --keys)"
            click.echo(f"virtual {cfg.name} serving ADB on {dev.address} (tree {root}); accepting "
                       f"{who}; Ctrl-C to stop")
            while not stop.wait(0.5):
                pass
            click.echo(f"virtual-adb: stopping ({_signal.Signals(got[0]).name})")
    except (ConfigError, OSError, ValueError) as exc:
        _fail(str(exc))


@main.command("virtual-mount")
@click.option("--board", default="sd888_phone", show_default=True, help="virtual board to mount")
@click.option("--virtual-root", type=click.Path(file_okay=False), help="the board's tree (created if missing)")
@click.option("--store-log", type=click.Path(dir_okay=False),
              help="append every store as a JSON line, with the thermal cap in force at that moment")
@click.argument("mountpoint", type=click.Path(file_okay=False))
def virtual_mount(board: str, virtual_root: str | None, store_log: str | None, mountpoint: str) -> None:
    """Mount a virtual board's kernel at MOUNTPOINT (FUSE), in the foreground until Ctrl-C or SIGTERM.

    Then `--backend linux --sysfs-root MOUNTPOINT` (or any program: cat, echo V > F) drives the
    virtual board exactly as a real /sys, with the kernel's rules and errors."""
    from sysfs_backends.registry import default_virtual_root
    from sysfs_backends.virtual.board import VirtualBoard
    from sysfs_backends.virtual.fuse_mount import FuseUnavailable, fuse_unavailable, serve

    reason = fuse_unavailable()
    if reason:
        _fail(f"{reason}; the in-process virtual backend (--backend virtual) works without it")
    if not Path(mountpoint).is_dir():
        _fail(f"{mountpoint}: the mount point must be an existing directory")
    try:
        cfg = load_board(board)
        root = Path(virtual_root) if virtual_root else default_virtual_root(cfg.name)
        VirtualBoard(root, cfg)
        click.echo(f"virtual {cfg.name} (tree {root}) mounted at {mountpoint}; Ctrl-C to unmount")
        serve(root, mountpoint, store_log)
        click.echo("virtual-mount: unmounted")
    except (ConfigError, FuseUnavailable, OSError, RuntimeError) as exc:
        _fail(str(exc))


# ---- profiling ----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json: bool) -> None:
    """List the OpenCL platforms and devices `dvfs-gov profile` can use."""
    from governor.profiler.runner import DeviceError, list_devices

    try:
        found = list_devices()
    except DeviceError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    if not found:
        click.echo("no OpenCL devices (install an ICD: pip install 'pyopencl[pocl]', or your GPU's driver)")
    for d in found:
        click.echo(f"{d['id']:5s} {d['type']:4s} {d['device']}  [{d['platform']}, {d['compute_units']} CUs, "
                   f"{d['global_mem_mib']} MiB]")


@main.command()
@click.option("--model", "model_name", required=True, help="model name or YAML path")
@click.option("--board", help="board name or YAML path (needed to change frequencies)")
@backend_options
@click.option("--no-dvfs", is_flag=True, help="profile at the frequencies in force, changing nothing")
@click.option("--cpu-khz", type=int, help="with --no-dvfs and no --board: the CPU frequency to record")
@click.option("--gpu-hz", type=int, help="with --no-dvfs and no --board: the GPU frequency to record")
@click.option("-n", "--points", default=5, show_default=True, help="planned pairs")
@click.option("--repeats", default=3, show_default=True)
@click.option("--warmup", default=2, show_default=True)
@click.option("--context-len", "context_lens", type=int, multiple=True,
              help="language models (default: from the model)")
@click.option("--device", "device_pref", help="OpenCL device: P:D from `dvfs-gov devices`, or part of its name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def profile(model_name: str, board: str | None, backend_kind: str, sysfs_root: str, virtual_root: str | None,
            state_file: str | None, adb_address: str | None, no_dvfs: bool, cpu_khz: int | None,
            gpu_hz: int | None, points: int, repeats: int, warmup: int, context_lens: tuple[int, ...],
            device_pref: str | None, output: str) -> None:
    """Profile MODEL as real OpenCL kernels at the planned frequency pairs; writes the profile format."""
    from governor.profiler.runner import DeviceError, ModelRunner, select_device
    from governor.profiler.sweep import Point, sweep
    from sysfs_backends.lifecycle import restoring
    from sysfs_backends.sysfs import BackendError

    try:
        spec = load_model_spec(model_name)
        ctx = list(context_lens) or spec.profile_context_len or None
        if spec.kind == "language_model" and (not ctx or len(ctx) < 2):
            _fail("a language model is profiled at >= 2 context lengths: give --context-len twice")
        backend = None
        if board:
            if backend_kind == "virtual" and not no_dvfs:
                _fail("the virtual board's frequencies do not slow real kernels: profile it with "
                      "`dvfs-gov simulate`, or use --backend linux/android on real hardware")
            cfg, backend = open_board_backend(board, backend_kind, sysfs_root, virtual_root, state_file,
                                              adb_address)
            if cfg.gpu is None:
                _fail(f"board {cfg.name!r} has no GPU: the OpenCL profiler times accelerator kernels; "
                      "write a CPU-only profile (frequencies.gpu_hz: [], runs[].gpu_hz: null, kind "
                      "'cpu' layers) from your runtime's own timings, see docs/profile-format.md")
        if no_dvfs or backend is None:
            if backend is not None:
                st = backend.state()
                cpu_khz, gpu_hz = st["cpu"].cur, st["gpu"].cur if "gpu" in st else 0
            if cpu_khz is None or gpu_hz is None:
                _fail("without --board, give --no-dvfs with --cpu-khz and --gpu-hz (the frequencies in force)")
            pairs, cpu_table, gpu_table, backend = [Point(cpu_khz, gpu_hz)], [cpu_khz], [gpu_hz], None
        else:
            cpu_table = cfg.cpu.inference.frequencies_khz
            gpu_table = cfg.gpu.frequencies_hz if cfg.gpu else [0]
            pairs = [Point(c, g) for c, g in plan_points(cpu_table, gpu_table, points)]
        dev, skipped = select_device(device_pref)
        for s in skipped:
            click.echo(f"note: skipped OpenCL device {s}", err=True)
        click.echo(f"profiling {spec.name} on {dev.name.strip()} at {len(pairs)} pair(s)", err=True)
        runner = ModelRunner(spec, dev, max_context=max(ctx or [0]))
        total = len(pairs) * repeats * len(ctx or [None])
        with click.progressbar(length=total, label="runs", file=sys.stderr) as bar:
            if backend is not None:
                with restoring(backend):
                    result = sweep(runner, pairs, cpu_table, gpu_table, dev.name.strip(), repeats, warmup,
                                   ctx, backend, bar.update)
            else:
                result = sweep(runner, pairs, cpu_table, gpu_table, dev.name.strip(), repeats, warmup,
                               ctx, None, bar.update)
    except (ConfigError, BackendError, DeviceError, OSError, ValueError) as exc:
        _fail(str(exc))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not result.profile["runs"]:
        _fail("nothing was measured")
    storage.write_atomic(output, json.dumps(result.profile))
    al = result.profile["clock_alignment"]
    click.echo(f"{len(result.profile['runs'])} runs -> {output} (clock alignment +/- {al['uncertainty_ns']} ns, "
               f"{al['clamped_intervals']} intervals clamped)")
    if result.interrupted:
        sys.exit(130)


@main.command("import-trace")
@click.argument("traces", nargs=-1, required=True)
@click.option("--model", "model_name", required=True, help="model name to record in the profile")
@click.option("--device", "device_name", required=True, help="device name to record in the profile")
@click.option("--cpu-table", help="every CPU frequency of the board, kHz, comma-separated")
@click.option("--gpu-table", help="every GPU frequency of the board, Hz, comma-separated")
@click.option("--step", help="regex for the record_function names that mark one inference")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def import_trace(traces: tuple[str, ...], model_name: str, device_name: str, cpu_table: str | None,
                 gpu_table: str | None, step: str | None, output: str) -> None:
    """Turn PyTorch-profiler (Chrome JSON) traces into one profile.

    Each TRACE is FILE@CPU_KHZ,GPU_HZ[,CONTEXT_LEN]: the trace recorded at that frequency pair.
    """
    from estimator.profile import ProfileError, parse_profile
    from governor.profiler.trace_import import TracedRun, TraceError, merge, runs_from_trace

    def ints(text: str | None) -> list[int] | None:
        return [int(x) for x in text.split(",")] if text else None

    traced = []
    try:
        for spec in traces:
            path, sep, freqs = spec.rpartition("@")
            parts = ints(freqs) if sep else None
            if not parts or len(parts) not in (2, 3):
                _fail(f"{spec!r}: write FILE@CPU_KHZ,GPU_HZ[,CONTEXT_LEN]")
            meta = TracedRun(path, parts[0], parts[1], parts[2] if len(parts) == 3 else None)
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                _fail(f"{path}: cannot read the trace: {exc}")
            traced.append((meta, runs_from_trace(data, path, step)))
        prof = merge(traced, model_name, device_name, ints(cpu_table), ints(gpu_table))
        parse_profile(prof, output)
    except (TraceError, ProfileError, ValueError) as exc:
        _fail(str(exc))
    storage.write_atomic(output, json.dumps(prof))
    n_layers = len(prof["runs"][0]["layers"])
    click.echo(f"{len(prof['runs'])} runs of {n_layers} layers from {len(traces)} trace(s) -> {output}")


# ---- configs -----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True)
def boards(as_json: bool) -> None:
    """List the board configs (local ./configs/boards first, then the bundled ones)."""
    out = []
    for name, path in available("boards").items():
        try:
            cfg = load_board(path)
        except ConfigError as exc:
            out.append({"name": name, "path": str(path), "error": str(exc)})
            continue
        out.append({
            "name": name,
            "path": str(path),
            "description": cfg.description,
            "cpu_policy": cfg.cpu.inference_policy,
            "cpu_mechanism": cfg.cpu.mechanism,
            "gpu": f"{cfg.gpu.kind}:{cfg.gpu.node}" if cfg.gpu else None,
            "gpu_mechanism": cfg.gpu.mechanism if cfg.gpu else None,
            "virtual": cfg.simulation is not None,
        })
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    for b in out:
        if "error" in b:
            click.echo(f"{b['name']:14s} INVALID: {b['error']}")
            continue
        virt = " [virtual]" if b["virtual"] else ""
        click.echo(f"{b['name']:14s} cpu {b['cpu_policy']} ({b['cpu_mechanism']}), "
                   f"gpu {b['gpu'] or '-'} ({b['gpu_mechanism'] or '-'}){virt}  {b['description']}")


@main.command()
@click.option("--board", help="board name or YAML path: what its backend discovers")
@click.option("--socket", "socket_path", help="a running governor's socket: its status")
@backend_options
@click.option("--json", "as_json", is_flag=True)
def status(board: str | None, socket_path: str | None, backend_kind: str, sysfs_root: str,
           virtual_root: str | None, state_file: str | None, adb_address: str | None, as_json: bool) -> None:
    """What the backend discovers on BOARD (domains, tables, governors, current frequencies), or
    what the governor daemon on SOCKET is doing (frequencies, models, per-app frames and misses)."""
    from sysfs_backends.sysfs import BackendError

    if socket_path or not board:
        from governor.client import GovernorClient

        path = socket_path or "/tmp/deadline-dvfs.sock"
        try:
            with GovernorClient(path) as client:
                st = client.status()
        except OSError as exc:
            _fail(f"no governor answers on {path}: {exc.strerror or exc} (give --board to inspect a board)")
        if as_json:
            click.echo(json.dumps(st, indent=1))
            return
        click.echo(f"governor pid {st['pid']} on {path}: backend {st['backend']} "
                   f"({'connected' if st['backend_connected'] else 'DISCONNECTED'}), cpu {st['cpu_khz']} kHz, "
                   + (f"gpu {st['gpu_hz']} Hz" if st.get("gpu_hz") is not None else "no gpu")
                   + f"{' (capped)' if st['capped'] else ''}, {st['in_flight']} frames in flight")
        for name, m in st["models"].items():
            click.echo(f"  model {name}: correction x{m['correction']}, host slowdown x{m['host_slowdown']}")
        for app, a in st["apps"].items():
            click.echo(f"  app {app}: {a['frames']} frames, {a['misses']} late, {a['infeasible']} infeasible")
        return
    try:
        _, backend = open_board_backend(board, backend_kind, sysfs_root, virtual_root, state_file,
                                        adb_address)
        found = backend.discover()
    except (ConfigError, BackendError, OSError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        click.echo(found.model_dump_json(indent=1))
        return
    click.echo(f"board {found.board} via {found.backend} backend")
    for name, d in found.domains.items():
        s = found.states[name]
        cpus = f" cpus {','.join(map(str, d.cpus))}" if d.cpus else ""
        click.echo(f"  {name}: {d.kind} {d.node}{cpus}, mechanism {d.mechanism}, "
                   f"transition {d.transition_latency_ns} ns")
        click.echo(f"    governor {s.governor} (available: {' '.join(d.governors)})")
        click.echo(f"    current {s.cur} {d.unit}, limits {s.min}..{s.max} {d.unit} "
                   f"(hardware {d.hw_min}..{d.hw_max})")
        click.echo(f"    table ({len(d.frequencies)}): {' '.join(map(str, d.frequencies))}")
    for note in found.notes:
        click.echo(f"  note: {note}")


@main.command()
@click.option("--board", required=True, help="board name or YAML path")
@backend_options
def restore(board: str, backend_kind: str, sysfs_root: str, virtual_root: str | None,
            state_file: str | None, adb_address: str | None) -> None:
    """Put back the governors and limits saved by a run that did not stop cleanly."""
    from sysfs_backends.sysfs import BackendError

    try:
        _, backend = open_board_backend(board, backend_kind, sysfs_root, virtual_root, state_file,
                                        adb_address)
        done = backend.restore()
    except (ConfigError, BackendError, OSError, ValueError) as exc:
        _fail(str(exc))
    if not done:
        click.echo("nothing to restore (no saved state, or settings already original)")
    for line in done:
        click.echo(f"restored {line}")


@main.command()
def models() -> None:
    """List the model configs."""
    for name, path in available("models").items():
        try:
            spec = load_model_spec(path)
        except ConfigError as exc:
            click.echo(f"{name:14s} INVALID: {exc}")
            continue
        n = len(spec.flat_layers())
        click.echo(f"{name:14s} {spec.kind:15s} {n:4d} layers  {spec.description}")




if __name__ == "__main__":
    main()
