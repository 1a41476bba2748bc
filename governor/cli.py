"""`dvfs-gov`: the command line. Commands parse arguments, call the library and print.

A mistake in what a user gave (a missing or unreadable file, invalid JSON or YAML, a file of the
wrong schema, a board that does not answer) ends in one line naming the file or field and exit
status 2, never a traceback: ``DvfsGroup`` catches the library's user-facing errors for every
command. Anything else is a bug: one line saying so, and the traceback with ``dvfs-gov -v``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click
import numpy as np
import yaml
from pydantic import ValidationError

from dvfs_schema.loading import ConfigError, available, load_board, load_model_spec
from estimator.planner import plan_grid
from estimator.profile import ProfileError
from governor import storage
from governor.config import parse_file_mode

# Errors that mean "what the user gave cannot be used": (module, class). Looked up in sys.modules
# when an error arrives, so that the OpenCL profiler is not imported for every command; a class
# whose module was never imported cannot have been raised.
USER_ERROR_CLASSES = (
    ("dvfs_schema.loading", "ConfigError"),
    ("estimator.profile", "ProfileError"),
    ("sysfs_backends.sysfs", "BackendError"),
    ("sysfs_backends.base", "BackendUnavailable"),
    ("governor.profiler.runner", "DeviceError"),
    ("governor.profiler.trace_import", "TraceError"),
    ("governor.daemon", "SocketInUse"),
    ("governor.client", "GovernorClientError"),
    ("governor.core", "GovernorError"),
    ("governor.managers", "OtherManagersActive"),
)


def _fail(message: str) -> None:
    """One line and exit status 2; with `dvfs-gov -v`, also the traceback of the error being handled."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("verbose") and sys.exc_info()[0] is not None:
        traceback.print_exc()
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def _user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ValidationError, OSError, json.JSONDecodeError, yaml.YAMLError,
                                        UnicodeDecodeError]
    for module, name in USER_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def describe_error(exc: BaseException) -> str:
    """One line for a person: the file or field first, then what is wrong with it."""
    if isinstance(exc, ValidationError):
        problems = []
        for err in exc.errors():
            key = ".".join(str(x) for x in err["loc"]) or "(top level)"
            problems.append(f"field '{key}': {err['msg'].removeprefix('Value error, ')}")
        text = f"invalid {exc.title}: " + "; ".join(problems)
    elif isinstance(exc, UnicodeDecodeError):
        text = f"not a text file (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start} is not UTF-8)"
    elif isinstance(exc, OSError) and exc.filename is not None:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        text = f"{exc.filename}{target}: {exc.strerror or exc}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().params["verbose"] = True


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s dvfs-gov[%(process)d] %(levelname)s %(message)s"


def _set_log_level(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """--log-level on the group or on any command: the library's log messages to stderr at that level
    (`run` uses it over the config's log_level)."""
    if value is None:
        return
    import logging

    ctx.find_root().meta["log_level"] = value
    logging.basicConfig(level=value.upper(), format=LOG_FORMAT, force=True)


def log_level_option(expose: bool = False) -> click.Option:
    return click.Option(["--log-level"], type=click.Choice(LOG_LEVELS, case_sensitive=False), expose_value=expose,
                        callback=_set_log_level, is_eager=True, help="log messages at this level and above to stderr")


class DvfsGroup(click.Group):
    """The command group: turns user errors from any command into one line and exit status 2."""

    group_class = type  # subgroups (models, plot) are DvfsGroups too, so their commands get the options

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Every command takes -v and --log-level too (`dvfs-gov fit -v ...` as well as `dvfs-gov -v fit ...`)."""
        if not any("-v" in p.opts or "--verbose" in p.opts for p in cmd.params):
            cmd.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False,
                                           callback=_set_verbose, help="show the traceback behind an error"))
        if not any("--log-level" in p.opts for p in cmd.params):
            cmd.params.append(log_level_option())
        example = EXAMPLES.get(cmd.name or "")
        if example and "Example:" not in (cmd.help or "") and not cmd.epilog:
            cmd.epilog = f"Example: {example}"
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
            verbose = bool(ctx.find_root().params.get("verbose"))
            if isinstance(exc, _user_error_types()):
                if verbose:
                    traceback.print_exc()
                click.echo(f"error: {describe_error(exc)}", err=True)
                ctx.exit(2)
            if verbose:
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {describe_error(exc)} (a bug in dvfs-gov; "
                       f"`dvfs-gov -v {ctx.invoked_subcommand or ''} ...` shows the traceback)", err=True)
            ctx.exit(1)


# One example per command, shown at the end of its --help (commands whose docstring has its own
# "Example:" line keep that one).
EXAMPLES = {
    "fit": "dvfs-gov fit yolo.profile.json -o yolo.est.json --json",
    "estimate": "dvfs-gov estimate yolo.est.json --cpu-khz 1800000 --gpu-hz 600000000",
    "plan": "dvfs-gov plan --board rk3588 -n 5 --json",
    "simulate": "dvfs-gov simulate --board sd888_phone --model yolo_tiny -o yolo.profile.json",
    "demo": "dvfs-gov demo --duration 10 --record demo.jsonl",
    "virtual-adb": "dvfs-gov virtual-adb --board sd888_phone --port 5555",
    "virtual-mount": "dvfs-gov virtual-mount --board sd888_phone /tmp/vsys",
    "devices": "dvfs-gov devices --json",
    "profile": "sudo dvfs-gov profile --model my_model.onnx --board rk3588 --backend linux -o my.profile.json",
    "import-trace": "dvfs-gov import-trace t1.json@cpu=1800000,gpu=600000000,mem=2112000000 "
                    "t2.json@cpu=816000,gpu=300000000,mem=1068000000 --board rk3588 --model yolo --device mali "
                    "-o yolo.profile.json",
    "boards": "dvfs-gov boards --json",
    "restore": "sudo dvfs-gov restore --board rk3588 --backend linux",
    "models": "dvfs-gov models --json",
    "plot": "dvfs-gov plot run demo.jsonl -o run.svg",
}


class FileMode(click.ParamType):
    """An octal permission mode such as 644 or 0600."""

    name = "octal mode"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_file_mode(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def mode_option(fn):
    """-o files are readable by everyone (0644) so that `sudo dvfs-gov profile` then `dvfs-gov fit` works."""
    return click.option("--mode", "file_mode", type=FileMode(), default="0644", show_default=True,
                        help="permissions of the written file (octal)")(fn)


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


@click.group(cls=DvfsGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Example: dvfs-gov demo --duration 10")
@click.version_option(package_name="deadline-dvfs")
@click.option("-v", "--verbose", is_flag=True, help="show the traceback behind an error")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), expose_value=False,
              callback=_set_log_level, is_eager=True, help="log messages at this level and above to stderr")
def main(verbose: bool) -> None:
    """Deadline-aware CPU/GPU DVFS for DNN and small-language-model inference."""


# ---- estimator ---------------------------------------------------------------------------
def identifiability_warnings(prof) -> list[str]:
    """Why a profile cannot pin down how the model's latency scales with frequency, if it cannot.

    The fit gives every layer a ``1/f`` term per frequency domain plus a constant (each times the
    context length too, for language models). A profile at one pair, or at one frequency of a
    domain, still fits without error but the estimator then cannot tell those terms apart and
    predicts other pairs from a guess; a single run per point lets one outlier through.
    """
    warnings = []
    lm = prof.is_language_model
    domains = {"CPU": ("kHz", prof.frequencies.cpu_khz, [r.cpu_khz for r in prof.runs]),
               "GPU": ("Hz", prof.frequencies.gpu_hz, [r.gpu_hz for r in prof.runs])}
    domains = {name: d for name, d in domains.items() if len(set(d[1])) > 1}  # a domain that can vary
    points: dict[tuple, int] = {}
    for r in prof.runs:
        key = (r.cpu_khz, r.gpu_hz, r.context_len)
        points[key] = points.get(key, 0) + 1
    terms = (len(domains) + 1) * (2 if lm else 1)
    pairs = {(r.cpu_khz, r.gpu_hz) for r in prof.runs}
    if len(pairs) == 1:
        (cpu_khz, gpu_hz), = pairs
        warnings.append(f"every run is at one frequency pair ({cpu_khz} kHz, {gpu_hz} Hz): the estimator cannot "
                        "learn how latency changes with frequency and extrapolates to every other pair")
    else:
        for name, (unit, _, values) in domains.items():
            if len(set(values)) < 2:
                warnings.append(f"every run is at one {name} frequency ({values[0]} {unit}): how latency "
                                f"depends on the {name} frequency cannot be identified")
        if len(points) <= terms:
            what = "(frequency pair, context length) points" if lm else "frequency pairs"
            warnings.append(f"only {len(points)} distinct {what}: each layer's scaling model has {terms} terms "
                            f"and needs at least {terms + 1}, so layers are fitted with one term "
                            "(profile the planned pairs: `dvfs-gov plan`)")
    if len(prof.runs) == 1:
        warnings.append("a single run: noise and outliers go straight into the estimator (use --repeats 3)")
    elif max(points.values()) == 1:
        warnings.append("one run per point: an outlier cannot be told from the frequency's effect "
                        "(use --repeats 3)")
    return warnings


@main.command()
@click.argument("profile", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the fitted estimator (JSON)")
@mode_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def fit(profile: str, output: str, file_mode: int, as_json: bool) -> None:
    """Fit the latency estimator to PROFILE (format deadline-dvfs.profile/1)."""
    from estimator.model import Estimator

    try:
        prof = storage.load_profile(profile)
        est = Estimator.fit(prof)
    except (ProfileError, ValueError) as exc:
        _fail(describe_error(exc))
    for warning in identifiability_warnings(prof):
        click.echo(f"warning: {profile}: {warning}", err=True)
    storage.write_atomic(output, est.to_json(), file_mode)
    t = est.data.training
    if as_json:
        click.echo(json.dumps({"model": prof.model, "device": prof.device, "layers": len(est.data.layer_names),
                               "runs": t["runs"], "points": len(t["points"]), "fit_mape_pct": t["fit_mape_pct"],
                               "cpu_only": not est.data.gpu_hz, "output": output}))
        return
    over = " x ".join(d.name for d in est.data.frequency_domains)
    click.echo(
        f"fitted {prof.model} on {prof.device}: {len(est.data.layer_names)} layers, "
        f"{t['runs']} runs at {len(t['points'])} frequency points ({over}), "
        f"error on the profiled runs {t['fit_mape_pct']}% -> {output}"
    )


@main.command()
@click.argument("estimator_file", type=click.Path(dir_okay=False))
@click.option("--cpu-khz", type=int, help="CPU frequency (kHz)")
@click.option("--gpu-hz", type=int, help="GPU frequency (Hz)")
@click.option("--mem-hz", type=int, help="memory level, in the memory domain's unit (estimators with a memory domain)")
@click.option("--context-len", type=click.IntRange(min=0), help="tokens in the context (language models)")
@click.option("--grid", is_flag=True, help="every point of the frequency tables")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def estimate(estimator_file: str, cpu_khz: int | None, gpu_hz: int | None, mem_hz: int | None,
             context_len: int | None, grid: bool, as_json: bool) -> None:
    """Predict latency and its breakdown at one frequency point or over the grid (every memory
    level too, with a memory domain)."""
    try:
        est = storage.load_estimator(estimator_file)
    except ValueError as exc:
        _fail(describe_error(exc))
    if est.is_language_model and context_len is None:
        _fail(f"{est.data.model} is a language model: give --context-len "
              f"(profiled at {est.data.profiled_context_len})")
    if not est.is_language_model and context_len is not None:
        _fail(f"{est.data.model} has no context: drop --context-len")
    has_gpu = bool(est.data.gpu_hz)
    if not has_gpu and gpu_hz is not None:
        _fail(f"{estimator_file}: {est.data.model} was profiled on a board without a GPU "
              "(frequencies.gpu_hz is []): drop --gpu-hz")
    mem_table = est.data.mem_hz
    if not mem_table and mem_hz is not None:
        _fail(f"{estimator_file}: {est.data.model} was profiled without a memory domain "
              f"(domains: {', '.join(est.domains)}): drop --mem-hz")
    if grid:
        if cpu_khz is not None or gpu_hz is not None or mem_hz is not None:
            _fail("--grid covers every point: drop --cpu-khz/--gpu-hz/--mem-hz")
        rows = est.grid(context_len).rows()
    else:
        if cpu_khz is None or (has_gpu and gpu_hz is None):
            _fail("give --cpu-khz and --gpu-hz, or --grid" if has_gpu else "give --cpu-khz, or --grid")
        if mem_table and mem_hz is None:
            _fail(f"{est.data.model} was profiled with a memory domain: give --mem-hz, one of "
                  f"{', '.join(map(str, mem_table))} (or values between them), or --grid")
        notes = []
        asked = [("cpu-khz", cpu_khz, est.data.cpu_khz)]
        if has_gpu:
            asked.append(("gpu-hz", gpu_hz, est.data.gpu_hz))
        if mem_table:
            asked.append(("mem-hz", mem_hz, mem_table))
        for what, value, table in asked:
            if value <= 0:
                _fail(f"--{what} must be positive")
            if not table[0] <= value <= table[-1]:
                notes.append(f"--{what} {value} is outside the profiled table "
                             f"[{table[0]}, {table[-1]}]: extrapolated")
        for note in notes:
            click.echo(f"warning: {note}", err=True)
        rows = est.breakdown(cpu_khz, gpu_hz, context_len, mem_hz=mem_hz).rows()
    if context_len is not None:
        for row in rows:
            row["context_len"] = context_len
    if as_json:
        click.echo(json.dumps(rows if grid else rows[0]))
        return
    for row in rows:
        if not has_gpu:
            mem = f", mem {row['mem_hz']}" if "mem_hz" in row else ""
            click.echo(f"cpu {row['cpu_khz']} kHz{mem}: {row['latency_ms']:.3f} ms "
                       f"(host busy {row['host_busy_ms']:.3f})")
            continue
        mem = f", mem {row['mem_hz']}" if "mem_hz" in row else ""
        click.echo(
            f"cpu {row['cpu_khz']} kHz, gpu {row['gpu_hz']} Hz{mem}: {row['latency_ms']:.3f} ms "
            f"(host busy {row['host_busy_ms']:.3f}, gpu busy {row['gpu_busy_ms']:.3f}, "
            f"overlap {row['overlap_ms']:.3f}, bubbles {row['bubble_ms']:.3f}, "
            f"host waiting {row['host_wait_ms']:.3f})"
        )


def _point_rows(cfg, points: list[tuple[int, ...]]) -> list[dict[str, int]]:
    """Planned points as {cpu_khz, gpu_hz, mem_hz} dicts, naming only the domains the board has."""
    keys = [{"cpu": "cpu_khz", "gpu": "gpu_hz", "mem": "mem_hz"}[d] for d in cfg.domain_tables]
    return [dict(zip(keys, p, strict=True)) for p in points]


@main.command()
@click.option("--board", required=True, help="board name or YAML path")
@click.option("-n", "--points", type=click.IntRange(min=1),
              help="points to profile (default: 5; 8 on a board with a memory domain)")
@click.option("--json", "as_json", is_flag=True)
def plan(board: str, points: int | None, as_json: bool) -> None:
    """Which frequency points to profile on BOARD, over its domains: (cpu, gpu) corners and the
    centre; with a memory domain, (cpu, gpu, mem) points that show every pair of domains at its
    corners (estimator.planner); without a GPU, CPU frequencies (both ends, the middle, then the
    largest gaps)."""
    try:
        cfg = load_board(board)
    except ConfigError as exc:
        _fail(describe_error(exc))
    rows = _point_rows(cfg, plan_grid(list(cfg.domain_tables.values()), points))
    if as_json:
        click.echo(json.dumps(rows))
        return
    units = {d.name: d.unit for d in cfg.domains}
    for row in rows:
        click.echo(", ".join(f"{k.split('_')[0]} {v} {units[k.split('_')[0]]}" for k, v in row.items()))


@main.command()
@click.option("--board", required=True, help="board name or YAML path (needs a simulation section)")
@click.option("--model", "model_name", required=True, help="model name or YAML path")
@click.option("-n", "--points", default=None, type=click.IntRange(min=1),
              help="planned points (default: 5, or 8 on a board with a memory domain)")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--context-len", "context_lens", type=click.IntRange(min=0), multiple=True,
              help="context lengths to profile (language models; default from the model)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@mode_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def simulate(board: str, model_name: str, points: int | None, repeats: int,
             context_lens: tuple[int, ...], seed: int, output: str, file_mode: int, as_json: bool) -> None:
    """Profile MODEL on the virtual BOARD (the simulator), writing the shared profile format."""
    from sysfs_backends.virtual.simulator import Simulator

    try:
        cfg, spec = load_board(board), load_model_spec(model_name)
        sim = Simulator(cfg, spec)
    except (ConfigError, ValueError) as exc:
        _fail(describe_error(exc))
    if spec.kind != "language_model" and context_lens:
        _fail(f"{spec.name} is a {spec.kind}, not a language model: drop --context-len")
    ctx = list(context_lens) or spec.profile_context_len or None
    if spec.kind == "language_model" and not ctx:
        _fail("a language model needs --context-len (at least two values)")
    pairs = plan_grid(list(cfg.domain_tables.values()), points)
    prof = sim.profile(pairs, repeats, ctx, np.random.default_rng(seed))
    storage.write_atomic(output, json.dumps(prof), file_mode)
    if as_json:
        click.echo(json.dumps({"model": spec.name, "board": cfg.name, "runs": len(prof["runs"]),
                               "points": len(pairs), "output": output}))
        return
    click.echo(f"profiled {spec.name} on virtual {cfg.name}: {len(prof['runs'])} runs at "
               f"{len(pairs)} {'pairs' if cfg.gpu else 'CPU frequencies'} -> {output}")


# ---- governor -----------------------------------------------------------------------------
@main.command()
@click.option("--config", "config_path", help="governor YAML (name or path; default "
              "/etc/deadline-dvfs/governor.yaml)")
@click.option("--socket", "socket_path", help="override the config's socket path")
@click.option("--virtual-root", help="override the virtual board's tree (virtual backend)")
@click.option("--record", "record_path", type=click.Path(dir_okay=False),
              help="write a run record (JSONL: every frame's decision and latency) for `plot run`/`export-trace`")
@click.option("--allow-other-managers", is_flag=True,
              help="take the board although another frequency manager (tuned, thermald, ...) is active")
def run(config_path: str | None, socket_path: str | None, virtual_root: str | None, record_path: str | None,
        allow_other_managers: bool) -> None:
    """Run the governor daemon until SIGTERM/SIGINT; restores the original settings on exit.

    Without --config it uses /etc/deadline-dvfs/governor.yaml (where `install-service` puts it).

    Example: dvfs-gov run --config virtual_phone --record run.jsonl
    """
    import logging

    from governor.app import build_governor
    from governor.config import load_governor_config
    from governor.daemon import SocketInUse, run_daemon
    from governor.managers import OtherManagersActive
    from governor.service import ETC_CONFIG
    from sysfs_backends.sysfs import BackendError

    if config_path is None:
        if not Path(ETC_CONFIG).is_file():
            _fail(f"no --config given and no {ETC_CONFIG}: give --config FILE or a bundled name "
                  f"({', '.join(available('governor'))}), or install one with `dvfs-gov install-service`")
        click.echo(f"using {ETC_CONFIG} (no --config given)", err=True)
        config_path = ETC_CONFIG
    try:
        cfg, cfg_dir = load_governor_config(config_path)
        if virtual_root:
            cfg.backend.virtual_root = virtual_root
        if allow_other_managers:
            cfg.allow_other_managers = True
        level = click.get_current_context().find_root().meta.get("log_level") or cfg.log_level
        logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
        gov = build_governor(cfg, cfg_dir)
        if record_path:
            from governor.recording import RunRecorder, header_for

            gov.recorder = RunRecorder(record_path, header_for(gov.board, list(gov.models), gov.backend.name))
        try:
            run_daemon(gov, socket_path or cfg.socket, cfg.socket_mode, cfg.socket_group)
        finally:
            if gov.recorder is not None:
                gov.recorder.close()
    except (ConfigError, BackendError, SocketInUse, OtherManagersActive, ValueError, OSError) as exc:
        _fail(describe_error(exc))


@main.command()
@click.option("--board", default="sd888_phone", show_default=True, help="virtual board")
@click.option("--duration", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="seconds of workload")
@click.option("--backend", "backend_kind", type=click.Choice(["virtual", "android"]), default="virtual",
              show_default=True, help="android: drive the virtual phone over ADB (real protocol, loopback)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--record", "record_path", type=click.Path(dir_okay=False),
              help="keep the governor's run record (JSONL) here, for `plot run` and `export-trace`")
def demo(board: str, duration: float, backend_kind: str, as_json: bool, record_path: str | None) -> None:
    """The governor on a virtual board with two apps (camera + assistant); no hardware needed."""
    from governor.demo import format_table, run_demo

    try:
        result = run_demo(board, duration, progress=lambda m: click.echo(m, err=as_json),
                          backend=backend_kind, record=record_path)
    except (ConfigError, RuntimeError, ValueError) as exc:
        _fail(describe_error(exc))
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
        _fail(describe_error(exc))


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


@main.command("install-service")
@click.option("--config", "config_path", help="governor YAML to install as /etc/deadline-dvfs/governor.yaml "
              "(kept if that file exists already)")
@click.option("--prefix", default="/", show_default=True, type=click.Path(file_okay=False),
              help="install under this root instead of / (a staging tree, an image)")
@click.option("--dry-run", is_flag=True, help="print what would be written, write nothing")
@click.option("--enable", is_flag=True, help="also run `systemctl daemon-reload && systemctl enable --now`")
def install_service(config_path: str | None, prefix: str, dry_run: bool, enable: bool) -> None:
    """Install the governor as a systemd service: the unit (with this interpreter's path) and the
    config under /etc/deadline-dvfs/; prints the systemctl steps (runs them with --enable).

    Example: sudo dvfs-gov install-service --config my_board.yaml
    """
    from governor import service

    plan = service.plan_install(config_path, prefix)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if dry_run:
        click.echo(f"would write {plan.unit_path}:")
        click.echo(plan.unit_text)
        if plan.config_text is not None:
            click.echo(f"would write {plan.config_path} (from {plan.config_source})")
        return
    for line in service.write_install(plan):
        click.echo(line)
    if enable:
        if prefix != "/":
            _fail("--enable starts the service on this machine: it goes with --prefix / only")
        service.enable()
        click.echo("enabled and started: systemctl status deadline-dvfs; dvfs-gov top")
        return
    click.echo("then: sudo " + " && sudo ".join(service.ENABLE_STEPS))


# ---- profiling ----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json: bool) -> None:
    """List the OpenCL platforms and devices `dvfs-gov profile` can use."""
    from governor.profiler.runner import DeviceError, list_devices

    try:
        found = list_devices()
    except DeviceError as exc:
        _fail(describe_error(exc))
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
@click.option("--cpu-khz", type=click.IntRange(min=1),
              help="with --no-dvfs and no --board: the CPU frequency to record")
@click.option("--gpu-hz", type=click.IntRange(min=0),
              help="with --no-dvfs and no --board: the GPU frequency to record")
@click.option("--mem-hz", type=click.IntRange(min=1),
              help="with --no-dvfs and no --board: the memory level in force to record (adds the memory domain)")
@click.option("-n", "--points", type=click.IntRange(min=1),
              help="planned points (default: 5 pairs; 8 triples on a board with a memory domain)")
@click.option("--end-to-end", is_flag=True,
              help="time only the whole inference (runs with layers: []), as for a runtime that cannot be traced")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--context-len", "context_lens", type=click.IntRange(min=0), multiple=True,
              help="language models (default: from the model)")
@click.option("--device", "device_pref", help="OpenCL device: P:D from `dvfs-gov devices`, or part of its name")
@click.option("--local-device-for-remote", is_flag=True,
              help="with --backend android: time kernels on THIS machine's OpenCL device although the "
                   "frequencies are set on the phone (for testing the plumbing only)")
@click.option("--allow-other-managers", is_flag=True,
              help="change frequencies although another frequency manager (tuned, thermald, ...) is active")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@mode_option
def profile(model_name: str, board: str | None, backend_kind: str, sysfs_root: str, virtual_root: str | None,
            state_file: str | None, adb_address: str | None, no_dvfs: bool, cpu_khz: int | None,
            gpu_hz: int | None, mem_hz: int | None, points: int | None, end_to_end: bool, repeats: int,
            warmup: int, context_lens: tuple[int, ...],
            device_pref: str | None, local_device_for_remote: bool, allow_other_managers: bool, output: str,
            file_mode: int) -> None:
    """Profile MODEL as real OpenCL kernels at the planned frequency pairs; writes the profile format.

    The kernels run on an OpenCL device of the machine running this command, so the board whose
    frequencies are set must be this machine: a phone driven over ADB would have its frequencies
    recorded against timings that never ran on it.
    """
    from governor.profiler.runner import DeviceError, ModelRunner, select_device
    from governor.profiler.sweep import Point, sweep
    from sysfs_backends.lifecycle import restoring
    from sysfs_backends.sysfs import BackendError

    try:
        spec = load_model_spec(model_name)
        if spec.kind != "language_model" and context_lens:
            _fail(f"{spec.name} is a {spec.kind}, not a language model: drop --context-len")
        ctx = list(context_lens) or spec.profile_context_len or None
        if spec.kind == "language_model" and (not ctx or len(ctx) < 2):
            _fail("a language model is profiled at >= 2 context lengths: give --context-len twice")
        backend = None
        if board and backend_kind == "android" and not local_device_for_remote:
            _fail("--backend android sets the phone's frequencies, but the kernels would be timed on this "
                  "machine's OpenCL device, so the profile would pair the phone's frequencies with this "
                  "machine's timings; run `dvfs-gov profile` on the phone itself (or trace it there and use "
                  "`import-trace`), or give --local-device-for-remote to do it anyway")
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
            if not no_dvfs and hasattr(backend, "claim"):
                backend.claim()  # one owner per board: refuse before building kernels
            if not no_dvfs and not allow_other_managers:  # after the claim: a governor of ours is named as such
                from governor.managers import certain, find_other_managers, refusal

                found = certain(find_other_managers(backend), f"board {cfg.name!r}")
                if found:
                    backend.close()
                    _fail(refusal(found, f"board {cfg.name!r}"))
        # a memory domain: the board's (BoardConfig.memory, once boards have one) or, without DVFS, --mem-hz
        memory = getattr(cfg, "memory", None) if board else None
        mem_table = list(memory.frequencies_hz) if memory is not None else None
        if no_dvfs or backend is None:
            if backend is not None:
                st = backend.state()
                cpu_khz, gpu_hz = st["cpu"].cur, st["gpu"].cur if "gpu" in st else 0
                mem_hz = st["mem"].cur if "mem" in st else mem_hz
            if cpu_khz is None or gpu_hz is None:
                _fail("without --board, give --no-dvfs with --cpu-khz and --gpu-hz (the frequencies in force)")
            pairs, cpu_table, gpu_table, backend = [Point(cpu_khz, gpu_hz, mem_hz=mem_hz)], [cpu_khz], [gpu_hz], None
            mem_table = [mem_hz] if mem_hz is not None else None
        else:
            if mem_hz is not None:
                _fail("--mem-hz records the memory level in force and goes with --no-dvfs; with DVFS the "
                      "board's memory table (if it has one) is planned")
            cpu_table = cfg.cpu.inference.frequencies_khz
            gpu_table = cfg.gpu.frequencies_hz if cfg.gpu else [0]
            tables = [cpu_table, gpu_table, *([mem_table] if mem_table else [])]
            pairs = [Point(c, g, mem_hz=m[0] if m else None) for c, g, *m in plan_grid(tables, points)]
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
                                   ctx, backend, bar.update, mem_table, end_to_end)
            else:
                result = sweep(runner, pairs, cpu_table, gpu_table, dev.name.strip(), repeats, warmup,
                               ctx, None, bar.update, mem_table, end_to_end)
    except (ConfigError, BackendError, DeviceError, OSError, ValueError) as exc:
        _fail(describe_error(exc))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not result.profile["runs"]:
        _fail("nothing was measured")
    storage.write_atomic(output, json.dumps(result.profile), file_mode)
    al = result.profile.get("clock_alignment")
    click.echo(f"{len(result.profile['runs'])} runs -> {output} " + (
        f"(clock alignment +/- {al['uncertainty_ns']} ns, {al['clamped_intervals']} intervals clamped)" if al
        else "(end to end: whole-inference latencies only)"))
    if result.interrupted:
        sys.exit(130)


def import_table_options(fn):
    """--board/--cpu-table/--gpu-table/--mem-table, shared by the trace importers."""
    fn = click.option("--mem-table", help="every memory level of the board, in its node's unit (Hz; MB/s "
                      "on bandwidth-voting nodes), comma-separated")(fn)
    fn = click.option("--gpu-table", help="every GPU frequency of the board, Hz, comma-separated")(fn)
    fn = click.option("--cpu-table", help="every CPU frequency of the board, kHz, comma-separated")(fn)
    fn = click.option("--board", "board_name", help="take every table and unit from this board config "
                      "(bundled name or YAML path) instead of --*-table")(fn)
    return fn


LABEL_HELP = ("Each {what} is FILE@cpu=KHZ,gpu=HZ,mem=LEVEL,ctx=N (named, any order; cpu required, gpu on a "
              "board with a GPU, mem the memory level in its node's unit, ctx a language model's context "
              "length) or FILE@CPU_KHZ,GPU_HZ[,CONTEXT_LEN]: the clocks in force while the file was recorded.")


def _labelled_files(specs: tuple[str, ...], board_name: str | None, cpu_table: str | None, gpu_table: str | None,
                    mem_table: str | None, what: str):
    """(the tables, [(TracedRun, decoded JSON)]) for the importers; a bad label or file ends in one line."""
    from governor.profiler.import_spec import board_tables, parse_spec

    tables = board_tables(board_name, cpu_table, gpu_table, mem_table)
    out = []
    for spec in specs:
        meta = parse_spec(spec, tables)
        try:
            data = json.loads(Path(meta.source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            _fail(f"{meta.source}: cannot read the {what}: {describe_error(exc)}")
        out.append((meta, data))
    return tables, out


@main.command("import-trace", help="Turn PyTorch-profiler (Chrome JSON) traces into one profile.\n\n"
              + LABEL_HELP.format(what="TRACE"))
@click.argument("traces", nargs=-1, required=True)
@click.option("--model", "model_name", required=True, help="model name to record in the profile")
@click.option("--device", "device_name", required=True, help="device name to record in the profile")
@import_table_options
@click.option("--step", help="regex for the record_function names that mark one inference")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@mode_option
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def import_trace(traces: tuple[str, ...], model_name: str, device_name: str, board_name: str | None,
                 cpu_table: str | None, gpu_table: str | None, mem_table: str | None, step: str | None,
                 output: str, file_mode: int, as_json: bool) -> None:
    from governor.profiler.import_spec import profile_tables
    from governor.profiler.trace_import import merge, runs_from_trace

    try:
        tables, files = _labelled_files(traces, board_name, cpu_table, gpu_table, mem_table, "trace")
        traced = [(meta, runs_from_trace(data, meta.source, step)) for meta, data in files]
        t = profile_tables([meta for meta, _ in files], tables)
        prof = merge(traced, model_name, device_name, t["cpu"], t["gpu"], t["mem"]).to_dict()
    except (ConfigError, ProfileError, ValueError) as exc:  # TraceError is a ValueError
        _fail(describe_error(exc))
    storage.write_atomic(output, json.dumps(prof), file_mode)
    n_layers = len(prof["runs"][0]["layers"])
    if as_json:
        click.echo(json.dumps({"runs": len(prof["runs"]), "layers": n_layers, "traces": len(traces),
                               "output": output}))
        return
    click.echo(f"{len(prof['runs'])} runs of {n_layers} layers from {len(traces)} trace(s) "
               f"over {'/'.join(_profile_domains(prof))} -> {output}")


def _profile_domains(prof: dict) -> list[str]:
    f = prof["frequencies"]
    return [name for name, key in (("cpu", "cpu_khz"), ("gpu", "gpu_hz"), ("mem", "mem_hz")) if f.get(key)]


@main.command("import-ort", help="Turn ONNX Runtime profiling files (SessionOptions.enable_profiling) into one "
              "profile.\n\n" + LABEL_HELP.format(what="PROFILE"),
              epilog="Example: dvfs-gov import-ort a.json@cpu=1510400,gpu=612000000,mem=2133000000 "
                     "b.json@cpu=1510400,gpu=612000000,mem=665600000 --board orin_nano -o my.profile.json")
@click.argument("profiles", nargs=-1, required=True)
@click.option("--model", "model_name", default="onnx_model", show_default=True,
              help="model name to record in the profile")
@click.option("--device", "device_name", help="device name to record (default: the execution providers seen)")
@import_table_options
@click.option("--warmup", default=0, show_default=True, help="runs to drop at the start of each file")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def import_ort_cmd(profiles: tuple[str, ...], model_name: str, device_name: str | None, board_name: str | None,
                   cpu_table: str | None, gpu_table: str | None, mem_table: str | None, warmup: int,
                   output: str, as_json: bool) -> None:
    from governor.profiler.import_spec import profile_tables
    from governor.profiler.ort_import import import_ort

    try:
        tables, traced = _labelled_files(profiles, board_name, cpu_table, gpu_table, mem_table,
                                         "ONNX Runtime profile")
        t = profile_tables([meta for meta, _ in traced], tables)
        prof = import_ort(traced, model_name, device_name, t["cpu"], t["gpu"], warmup, t["mem"]).to_dict()
    except (ConfigError, ProfileError, ValueError) as exc:  # TraceError is a ValueError
        _fail(describe_error(exc))
    storage.write_atomic(output, json.dumps(prof))
    kinds = [x["kind"] for x in prof["runs"][0]["layers"]]
    if as_json:
        click.echo(json.dumps({"runs": len(prof["runs"]), "layers": len(kinds), "device_layers": kinds.count("gpu"),
                               "host_layers": kinds.count("cpu"), "files": len(profiles),
                               "output": output}))
        return
    click.echo(f"{len(prof['runs'])} runs of {len(kinds)} layers ({kinds.count('gpu')} on the device, "
               f"{kinds.count('cpu')} on the host) from {len(profiles)} file(s) over "
               f"{'/'.join(_profile_domains(prof))} -> {output}")


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
@click.option("--watch", is_flag=True, help="keep refreshing the daemon's status (same as `dvfs-gov top`)")
@click.pass_context
def status(ctx: click.Context, board: str | None, socket_path: str | None, backend_kind: str, sysfs_root: str,
           virtual_root: str | None, state_file: str | None, adb_address: str | None, as_json: bool,
           watch: bool) -> None:
    """What the backend discovers on BOARD (domains, tables, governors, current frequencies), or
    what the governor daemon on SOCKET is doing (frequencies, models, per-app frames and misses).

    Example: dvfs-gov status --socket /run/deadline-dvfs/governor.sock --json
    """
    from sysfs_backends.sysfs import BackendError

    if watch:
        if board:
            _fail("--watch follows a running governor: give --socket, not --board")
        ctx.invoke(top, socket_path=socket_path, interval_s=1.0, count=None, as_json=as_json)
        return
    if socket_path or not board:
        from governor.client import GovernorClient

        path = socket_path or default_socket()
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
                   + (f", mem {st['mem_hz']} {st.get('mem_unit', 'Hz')}" if st.get("mem_hz") is not None else "")
                   + f"{' (capped)' if st['capped'] else ''}, {st['in_flight']} frames in flight")
        if st.get("power_rail"):
            per_frame = st.get("energy_per_frame_mj")
            click.echo(f"  measured ({st['power_rail']} rail): {st.get('power_mw')} mW"
                       + (f", {per_frame} mJ per frame" if per_frame is not None else ", no frame measured yet"))
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
        _fail(describe_error(exc))
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
    for r in found.rails:
        click.echo(f"  power rail {r.name}: {r.kind}, covers {'+'.join(r.covers)}, "
                   f"{'energy counter' if r.quantity == 'energy' else 'instantaneous power'} ({r.source})")
    for note in found.notes:
        click.echo(f"  note: {note}")


def default_socket() -> str:
    """The socket of the installed service's config when there is one, else the bundled configs' default."""
    from governor.service import ETC_CONFIG

    try:
        found = yaml.safe_load(Path(ETC_CONFIG).read_text(encoding="utf-8"))
        if isinstance(found, dict) and isinstance(found.get("socket"), str):
            return found["socket"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    return "/tmp/deadline-dvfs.sock"


@main.command()
@click.option("--socket", "socket_path", help="the governor's socket (default: the installed config's, "
              "else /tmp/deadline-dvfs.sock)")
@click.option("--interval", "interval_s", default=1.0, show_default=True,
              type=click.FloatRange(min=0.05), help="seconds between refreshes")
@click.option("--count", type=click.IntRange(min=1), help="stop after N refreshes (for scripts)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per refresh")
def top(socket_path: str | None, interval_s: float, count: int | None, as_json: bool) -> None:
    """Live view of a running governor: frequencies per domain, caps, each app's fps, misses,
    infeasible and failed frames, the correction per model. Redraws in place in a terminal (plain
    ANSI, works over SSH); one line per refresh when piped.

    Example: dvfs-gov top --socket /run/deadline-dvfs/governor.sock
    """
    from governor.client import GovernorClient
    from governor.top import watch

    path = socket_path or default_socket()
    try:
        client = GovernorClient(path)
    except OSError as exc:
        _fail(f"no governor answers on {path}: {exc.strerror or exc} (start one with `dvfs-gov run`)")
    mode = "json" if as_json else ("tty" if sys.stdout.isatty() else "plain")
    try:
        with client:
            watch(client.status, lambda text: click.echo(text), path, interval_s, count, mode)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _fail(f"the governor on {path} went away: {exc.strerror or exc}")


@main.command()
@click.option("--board", required=True, help="board name or YAML path")
@backend_options
@click.option("--defaults", is_flag=True,
              help="no state file needed: back to the kernel's defaults (full hardware range, the board "
                   "config's default governor); removes a damaged state file")
@click.option("--force", is_flag=True,
              help="restore even though a running governor owns the board (it keeps running)")
def restore(board: str, backend_kind: str, sysfs_root: str, virtual_root: str | None,
            state_file: str | None, adb_address: str | None, defaults: bool, force: bool) -> None:
    """Put back the governors and limits saved by a run that did not stop cleanly.

    Exits 1 if anything could not be restored (each failure is listed; the state file is kept for
    another try) and 2 if nothing was attempted (a live owner, a damaged state file, a bad option)."""
    from sysfs_backends.state_file import RestoreIncomplete
    from sysfs_backends.sysfs import BackendError

    try:
        _, backend = open_board_backend(board, backend_kind, sysfs_root, virtual_root, state_file,
                                        adb_address)
        owner = backend.owner_pid() if hasattr(backend, "owner_pid") else None
        if owner is not None:
            who = f"pid {owner}" if owner > 0 else "another process"
            if not force:
                _fail(f"board {board!r} is owned by a running governor ({who}); it restores the board itself "
                      f"when it stops (kill -TERM {owner if owner > 0 else '<pid>'}). Nothing was changed; "
                      "--force restores under it")
            click.echo(f"WARNING: --force: restoring board {board!r} while the governor {who} that owns it is "
                       "running; it may pin the frequencies again, and its state file is left in place", err=True)
        if defaults:
            if not hasattr(backend, "restore_defaults"):
                _fail(f"backend {backend_kind!r} cannot restore kernel defaults")
            done = backend.restore_defaults(force=force)
            for line in done:
                click.echo(f"restored {line}")
            click.echo(f"board {board!r} is back to the kernel's defaults (not to a saved state)")
            return
        done = backend.restore(force=force) if owner is not None else backend.restore()
        if not done:
            drift = backend.differs_from_defaults() if hasattr(backend, "differs_from_defaults") else []
            where = f" at {backend.state_file}" if getattr(backend, "state_file", None) else ""
            if drift:
                click.echo(f"nothing saved{where} to restore, but the board is not at the kernel's defaults: "
                           + "; ".join(drift) + ". If a run left that (its state file lost), "
                           f"`dvfs-gov restore --board {board} --defaults` resets it")
            else:
                click.echo("nothing to restore (no saved state, or settings already original)")
    except RestoreIncomplete as exc:
        for line in exc.done:
            click.echo(f"restored {line}")
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (ConfigError, BackendError, OSError, ValueError) as exc:
        _fail(describe_error(exc))
    for line in done:
        click.echo(f"restored {line}")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the model configs; `models describe MODEL` shows one model's layers."""
    if ctx.invoked_subcommand is not None:
        return
    out = []
    for name, path in available("models").items():
        try:
            spec = load_model_spec(path)
        except ConfigError as exc:
            out.append({"name": name, "path": str(path), "error": str(exc)})
            continue
        out.append({"name": name, "path": str(path), "kind": spec.kind, "layers": len(spec.flat_layers()),
                    "description": spec.description})
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    for m in out:
        if "error" in m:
            click.echo(f"{m['name']:14s} INVALID: {m['error']}")
            continue
        click.echo(f"{m['name']:14s} {m['kind']:15s} {m['layers']:4d} layers  {m['description']}")




@models.command("describe")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="print the layers as JSON")
def models_describe(model: str, as_json: bool) -> None:
    """What MODEL (a name, a YAML file or an ONNX file) is to the profiler and the estimator: its
    layers with their shapes; for ONNX, the node each layer came from and the host fallbacks.

    Example: dvfs-gov models describe my_model.onnx
    """
    if model.lower().endswith(".onnx"):
        from dvfs_schema.onnx_model import OnnxModelError, describe, load_onnx

        try:
            imported = load_onnx(model)
        except OnnxModelError as exc:
            _fail(str(exc))
        spec, rows = imported.spec, describe(imported)
        dropped = [f"{d.node or d.layer} ({d.op_type})" for d in imported.dropped]
    else:
        try:
            spec = load_model_spec(model)
        except ConfigError as exc:
            _fail(str(exc))
        rows = [{"layer": x.name, "op": x.op, **x.model_dump(exclude={"name", "op"})} for x in spec.flat_layers()]
        dropped = []
    if as_json:
        click.echo(json.dumps({"name": spec.name, "kind": spec.kind, "dtype_bytes": spec.dtype_bytes,
                               "layers": rows, "dropped": dropped}, indent=1))
        return
    hosts = sum(r["op"] == "host" for r in rows)
    click.echo(f"{spec.name}: {spec.kind}, {len(rows)} layers ({len(rows) - hosts} on the GPU, {hosts} host "
               f"fallbacks), {spec.dtype_bytes}-byte elements. {spec.description}")
    for r in rows:
        shape = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k not in ("layer", "op", "onnx_node", "onnx_op", "note"))
        origin = f"  <- {r['onnx_op']}" if "onnx_op" in r else ""
        note = f"  [{r['note']}]" if r.get("note") else ""
        click.echo(f"  {r['layer']:28s} {r['op']:12s} {shape}{origin}{note}")
    if dropped:
        click.echo(f"  (no kernel, dropped: {', '.join(dropped)})")


# ---- plots --------------------------------------------------------------------------------
def _board_matching_tables(cfg, est) -> bool:
    gpu = cfg.gpu.frequencies_hz if cfg.gpu else [0]
    # a memory domain the estimator varies must be the board's; one it lacks is left where it is
    mem_ok = not est.data.mem_hz or (cfg.memory is not None and list(cfg.memory.frequencies_hz) == est.data.mem_hz)
    return cfg.cpu.inference.frequencies_khz == est.data.cpu_khz and gpu == est.data.gpu_hz and mem_ok


def _board_matching(est) -> object | None:
    """The first known board whose frequency tables are the estimator's (for energy and the pick)."""
    for path in available("boards").values():
        try:
            cfg = load_board(path)
        except ConfigError:
            continue
        if _board_matching_tables(cfg, est):
            return cfg
    return None


@main.group()
def plot() -> None:
    """Draw an estimator's grid, a recorded run, or a profile (PNG or SVG; needs the [plot] extra)."""


@plot.command("grid")
@click.argument("estimator_file", type=click.Path(dir_okay=False))
@click.option("--deadline-ms", type=float, required=True, help="the frame's deadline (ms)")
@click.option("--context-len", type=int, help="tokens in the context (language models)")
@click.option("--board", help="board name or YAML (energy panel and the governor's pick; default: the board "
              "whose tables match the estimator's)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="out.png or out.svg")
def plot_grid_cmd(estimator_file: str, deadline_ms: float, context_len: int | None, board: str | None,
                  output: str) -> None:
    """Heatmaps of predicted latency and energy over the (cpu, gpu) grid, with the deadline's contour
    and the pair the governor picks.

    Example: dvfs-gov plot grid yolo.est.json --deadline-ms 20 -o grid.png
    """
    from governor.plots import PlotError, plot_grid

    try:
        est = storage.load_estimator(estimator_file)
        if est.is_language_model and context_len is None:
            _fail(f"{est.data.model} is a language model: give --context-len")
        if deadline_ms <= 0:
            _fail("--deadline-ms must be positive")
        cfg = load_board(board) if board else _board_matching(est)
        if board and _board_matching_tables(cfg, est) is False:
            _fail(f"--board {board}: its frequency tables are not the estimator's ({est.data.device}); "
                  "give the board it was profiled on, or leave --board out")
        summary = plot_grid(est, deadline_ms, output, context_len if est.is_language_model else None, cfg)
    except (PlotError, ConfigError, ValueError, OSError) as exc:
        _fail(str(exc))
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{summary.panels} panel(s) -> {output}")


@plot.command("run")
@click.argument("record_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="out.png or out.svg")
def plot_run_cmd(record_file: str, output: str) -> None:
    """Timeline of a recorded run (`run --record`, `demo --record`): frequencies per domain, latency
    against the deadline per app, misses marked, caps shaded, power where recorded.

    Example: dvfs-gov plot run demo.jsonl -o run.svg
    """
    from governor.plots import PlotError, plot_run
    from governor.recording import read_run

    try:
        summary = plot_run(read_run(record_file), output)
    except (PlotError, ValueError, OSError) as exc:
        _fail(str(exc))
    e = summary.elements
    click.echo(f"{e['frames']} frames, {e['misses']} missed, {e['cap_spans']} capped span(s) -> {output}")


@plot.command("profile")
@click.argument("profile_file", type=click.Path(dir_okay=False))
@click.option("--run", "run_index", default=0, show_default=True, help="which run of the profile")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="out.png or out.svg")
def plot_profile_cmd(profile_file: str, run_index: int, output: str) -> None:
    """Per-layer Gantt of one profiled run: host and device lanes, bubbles hatched.

    Example: dvfs-gov plot profile yolo.profile.json --run 0 -o gantt.png
    """
    from governor.plots import PlotError, plot_profile

    try:
        summary = plot_profile(storage.load_profile(profile_file), output, run_index)
    except (PlotError, ProfileError, ValueError, OSError) as exc:
        _fail(str(exc))
    e = summary.elements
    click.echo(f"{e['host_bars']} host / {e['device_bars']} device intervals, {e['bubbles']} bubble(s) -> {output}")


# ---- trace export -------------------------------------------------------------------------
@main.command("export-trace")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--estimator", "estimator_file", type=click.Path(dir_okay=False),
              help="with a profile: add the estimator's predicted timeline at the same pair")
@click.option("--run", "run_index", default=0, show_default=True, help="with a profile: which run")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="trace file (.json)")
def export_trace(source: str, estimator_file: str | None, run_index: int, output: str) -> None:
    """Write SOURCE (a profile, or a run record from `run --record`) as a Chrome JSON trace that
    ui.perfetto.dev opens: host/device tracks and bubbles, or decisions as counters and frames as slices.

    Example: dvfs-gov export-trace yolo.profile.json --estimator yolo.est.json -o yolo.trace.json
    """
    from governor.recording import RecordError, read_run
    from governor.trace_export import profile_trace, run_trace

    try:
        with open(source, encoding="utf-8") as fh:
            first = fh.readline()
    except OSError as exc:
        _fail(f"{source}: cannot read: {exc.strerror or exc}")
    is_record = first.lstrip().startswith("{") and '"type"' in first and '"header"' in first
    try:
        if is_record:
            if estimator_file:
                _fail("--estimator goes with a profile, not a run record")
            trace = run_trace(read_run(source))
        else:
            est = storage.load_estimator(estimator_file) if estimator_file else None
            trace = profile_trace(storage.load_profile(source), run_index, est)
    except (RecordError, ProfileError, ValueError) as exc:
        _fail(str(exc))
    storage.write_atomic(output, json.dumps(trace))
    click.echo(f"{len(trace['traceEvents'])} trace events -> {output} (open it in https://ui.perfetto.dev)")


if __name__ == "__main__":
    main()
