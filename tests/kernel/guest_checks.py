"""The guest-side driver of the real-kernel tests: ONE Python process per guest.

It runs inside a QEMU guest (see tests/kernel/harness.py), in a chroot whose /sys is the guest
kernel's own, and writes ``report.json`` to the results folder (``$DVFS_RESULTS``). The host-side
tests (tests/kernel/test_real_kernels.py) only read that report: every check here records the
values it compared, so a failing test can show them.

Why one process: each Python start costs 10-30 s under TCG, so the driver does everything it can
in process (backend API, snapshots, the client) and starts only what must be a separate process:
``dvfs-gov status`` (started before the heavy imports, so both vCPUs work), ``dvfs-gov fit``
(in the background while the backend checks run), two daemons and ``dvfs-gov restore``.

Steps, each compared with the kernel's truth (``cpuinfo_cur_freq`` where it exists, else
``scaling_cur_freq``; devfreq ``cur_freq``; re-read after SETTLE_S) and with the snapshot of every
cpufreq/devfreq attribute taken at boot:

1. board YAML written from what /sys shows; ``dvfs-gov status --json`` against it;
2. the backend API with both mechanisms: save, every table value, values between entries, above
   max, below min, repeats, read-back, restore;
3. a ``userspace`` governor with a setpoint as the original state: restore must bring it back;
4. a daemon (pinned ``minmax``) serving a client whose fake inference sleeps a time derived from
   the frequency really in force; SIGTERM;
5. a daemon (``userspace``), SIGKILL, ``dvfs-gov restore``.

Only the standard library is imported before ``dvfs-gov status`` is started.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

try:  # run as a script in the guest (its folder on sys.path), or imported from the tests
    from write_sequence import run_sequence
except ImportError:
    from tests.kernel.write_sequence import run_sequence

CPUFREQ = "/sys/devices/system/cpu/cpufreq"
DEVFREQ = "/sys/class/devfreq"
SETTLE_S = 0.05  # the kernel's truth is read this long after an apply
DYNAMIC_OK = ("userspace", "performance", "powersave")  # governors under which the clock stays put
MHZ_KHZ = 1000


# ---- reading the kernel ----------------------------------------------------------------------
def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write(path: str, value: str) -> str | None:
    """Write like ``echo value > path``; returns the errno name on refusal."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return None


def snapshot_dir(root: str) -> dict[str, str]:
    """Every readable regular file under ROOT (symlinks not followed): relative path -> content,
    or ``<error ENAME>`` when the kernel refuses the read (a write-only or unsupported file)."""
    out: dict[str, str] = {}

    def walk(d: str, rel: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            name = f"{rel}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, name + "/")
            elif entry.is_file(follow_symlinks=False):
                if not entry.stat(follow_symlinks=False).st_mode & 0o444:
                    continue  # write-only (stats/reset)
                try:
                    out[name] = read(entry.path)
                except OSError as exc:
                    out[name] = f"<error {errno.errorcode.get(exc.errno or 0, exc.errno)}>"
                except UnicodeDecodeError:
                    out[name] = "<binary>"

    walk(root, "")
    return out


class Domain:
    """One cpufreq policy or devfreq device, by its real paths (the guest's own /sys)."""

    def __init__(self, name: str, kind: str, path: str) -> None:
        self.name, self.kind, self.path = name, kind, os.path.realpath(path)
        self.node = os.path.basename(path)
        if kind == "cpufreq":
            self.f_gov, self.f_min, self.f_max = "scaling_governor", "scaling_min_freq", "scaling_max_freq"
            self.f_setpoint, self.f_table = "scaling_setspeed", "scaling_available_frequencies"
            self.f_govs = "scaling_available_governors"
            hw = os.path.join(self.path, "cpuinfo_cur_freq")
            self.f_truth = "cpuinfo_cur_freq" if os.path.exists(hw) else "scaling_cur_freq"
            self.volatile_cur = ("scaling_cur_freq", "cpuinfo_cur_freq")
        else:
            self.f_gov, self.f_min, self.f_max = "governor", "min_freq", "max_freq"
            self.f_setpoint, self.f_table = "userspace/set_freq", "available_frequencies"
            self.f_govs = "available_governors"
            self.f_truth = "cur_freq"
            self.volatile_cur = ("cur_freq", "target_freq")

    def f(self, name: str) -> str:
        return os.path.join(self.path, name)

    def get(self, name: str) -> str:
        return read(self.f(name))

    def int(self, name: str) -> int:
        return int(self.get(name).split()[0])

    def table(self) -> list[int]:
        return sorted({int(x) for x in self.get(self.f_table).split()})

    def truth(self) -> int:
        """The frequency really running, as the kernel best knows it."""
        return self.int(self.f_truth)

    def limits(self) -> tuple[int, int]:
        return self.int(self.f_min), self.int(self.f_max)

    def snapshot(self) -> dict[str, str]:
        return snapshot_dir(self.path)

    def describe(self) -> dict:
        d = {"kind": self.kind, "node": self.node, "path": self.path, "truth_file": self.f_truth,
             "table": self.table(), "governors": self.get(self.f_govs).split()}
        if self.kind == "cpufreq":
            d["cpus"] = [int(x) for x in self.get("related_cpus").split()]
            d["driver"] = self.get("scaling_driver")
            d["transition_latency_ns"] = self.int("cpuinfo_transition_latency")
            d["hw_min"], d["hw_max"] = self.int("cpuinfo_min_freq"), self.int("cpuinfo_max_freq")
        return d


def find_domains(devfreq_node: str | None) -> dict[str, Domain]:
    """policy of CPU 0, and the devfreq device (the one named, else the first one) if any."""
    policies = sorted(p for p in os.listdir(CPUFREQ) if p.startswith("policy"))
    if not policies:
        raise RuntimeError(f"no cpufreq policy under {CPUFREQ}: the cpufreq driver did not bind")
    cpu = next((p for p in policies
                if "0" in read(f"{CPUFREQ}/{p}/related_cpus").split()), policies[0])
    out = {"cpu": Domain("cpu", "cpufreq", f"{CPUFREQ}/{cpu}")}
    nodes = sorted(os.listdir(DEVFREQ)) if os.path.isdir(DEVFREQ) else []
    if devfreq_node or nodes:
        node = devfreq_node or nodes[0]
        if node not in nodes:
            raise RuntimeError(f"devfreq device {node!r} not found (found: {nodes})")
        out["gpu"] = Domain("gpu", "devfreq", f"{DEVFREQ}/{node}")
    return out


# ---- comparing snapshots ---------------------------------------------------------------------
def volatile(dom: Domain, reference: dict[str, str], name: str) -> bool:
    """Counters, and the clock itself under a governor that moves it on its own."""
    if name.startswith("stats/") or name in ("trans_stat", "load"):
        return True
    if name.startswith("power/runtime_") or name.endswith("_time"):
        return True
    gov = reference.get(dom.f_gov, "")
    return name in dom.volatile_cur and gov not in DYNAMIC_OK


def snapshot_all(domains: dict[str, Domain]) -> dict[str, dict[str, str]]:
    return {name: d.snapshot() for name, d in domains.items()}


def diff(domains: dict[str, Domain], reference: dict[str, dict[str, str]],
         now: dict[str, dict[str, str]]) -> list[dict]:
    """Every attribute that differs from REFERENCE (volatile ones excepted), incl. files that
    appeared or disappeared."""
    out = []
    for name, dom in domains.items():
        ref, cur = reference[name], now[name]
        for key in sorted(set(ref) | set(cur)):
            if volatile(dom, ref, key):
                continue
            a, b = ref.get(key, "<absent>"), cur.get(key, "<absent>")
            if key == "userspace/set_freq" and a == "undefined" and b == ref.get("cur_freq"):
                # devfreq's userspace governor shows "undefined" until a setpoint is written (it then
                # keeps the previous clock); a setpoint equal to that clock is the same state, and the
                # clock itself (cur_freq, target_freq) is compared on its own
                continue
            if a != b:
                out.append({"domain": name, "file": key, "expected": a, "found": b})
    return out


def settled_snapshot(domains: dict[str, Domain]) -> dict[str, dict[str, str]]:
    time.sleep(SETTLE_S)
    return snapshot_all(domains)


def reset_to(domains: dict[str, Domain], reference: dict[str, dict[str, str]]) -> list[str]:
    """Put REFERENCE back with raw writes (not through the backend): one failed step must not
    spoil the baseline of the next. Returns what had to be written."""
    done = []
    for name, dom in domains.items():
        ref = reference[name]
        cur = dom.snapshot()
        if not diff({name: dom}, {name: ref}, {name: cur}):
            continue
        gov = ref[dom.f_gov]
        lo, hi = ref[dom.f_min], ref[dom.f_max]
        top = str(dom.table()[-1])
        steps = [(dom.f_gov, gov), (dom.f_max, top), (dom.f_min, lo), (dom.f_max, hi)]
        if gov == "userspace" and ref.get(dom.f_setpoint, "").isdigit():
            steps.append((dom.f_setpoint, ref[dom.f_setpoint]))
        elif gov == "userspace" and ref.get(dom.f_setpoint) == "undefined" and ref.get("cur_freq", "").isdigit():
            # devfreq's userspace governor forgets its setpoint when it is selected again, and then
            # keeps the clock it finds: the boot clock first, then away and back
            other = next((g for g in ref[dom.f_govs].split() if g != "userspace"), None)
            steps.append((dom.f_setpoint, ref["cur_freq"]))
            if other:
                steps += [(dom.f_gov, other), (dom.f_gov, "userspace")]
        for attr, value in steps:
            err = write(dom.f(attr), value)
            done.append(f"{name}: {attr} = {value}" + (f" ({err})" if err else ""))
    return done


# ---- the report ------------------------------------------------------------------------------
class Report:
    """The JSON report, rewritten after every step so that a guest that dies leaves what it did."""

    def __init__(self, path: Path, arch: str) -> None:
        self.path = path
        self.data: dict = {"arch": arch, "kernel": os.uname().release, "steps": {}, "timings_s": {},
                           "resets": []}
        self.t0 = time.monotonic()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def step(self, name: str):
        report = self

        class _Step:
            def __enter__(self) -> dict:
                self.t = time.monotonic()
                self.d = report.data["steps"].setdefault(name, {})
                return self.d

            def __exit__(self, kind, exc, tb) -> bool:
                if exc is not None:
                    self.d["error"] = "".join(traceback.format_exception(kind, exc, tb))[-4000:]
                report.data["timings_s"][name] = round(time.monotonic() - self.t, 2)
                report.save()
                return kind is not None and issubclass(kind, Exception)

        return _Step()


# ---- subprocesses ----------------------------------------------------------------------------
def dvfs_gov() -> list[str]:
    """The CLI: the venv's console script when there is one, else the module."""
    import shutil

    script = Path(sys.executable).parent / "dvfs-gov"
    if script.exists():
        return [str(script)]
    found = shutil.which("dvfs-gov")
    return [found] if found else [sys.executable, "-m", "governor.cli"]


def run_cli(args: list[str], timeout_s: float = 300) -> dict:
    t = time.monotonic()
    res = subprocess.run([*dvfs_gov(), *args], capture_output=True, text=True, timeout=timeout_s)
    return {"argv": ["dvfs-gov", *args], "rc": res.returncode, "stdout": res.stdout[-6000:],
            "stderr": res.stderr[-6000:], "seconds": round(time.monotonic() - t, 2)}


# ---- what the guest is: board and synthetic model --------------------------------------------
def board_config(domains: dict[str, Domain], boot: dict[str, dict[str, str]], name: str,
                 cpu_mech: str, gpu_mech: str) -> dict:
    """A board config from what /sys shows (power tables made up: cubic in frequency, so the
    governor prefers the lowest pair that makes a deadline)."""
    cpu = domains["cpu"]
    c = cpu.describe()
    table = c["table"]
    cfg: dict = {
        "name": name, "description": f"QEMU guest, {c['driver']}, generated from /sys",
        "cpu": {"inference_policy": cpu.node, "mechanism": cpu_mech, "policies": {cpu.node: {
            "cpus": c["cpus"], "frequencies_khz": table,
            "power_mw": [round(100 + 2000 * (f / table[-1]) ** 3, 1) for f in table],
            "transition_latency_ns": c["transition_latency_ns"], "governors": c["governors"],
            "default_governor": boot["cpu"][cpu.f_gov]}}},
    }
    if "gpu" in domains:
        g = domains["gpu"].describe()
        gt = g["table"]
        cfg["gpu"] = {"kind": "devfreq", "node": domains["gpu"].node, "mechanism": gpu_mech,
                      "frequencies_hz": gt,
                      "power_mw": [round(50 + 1500 * (f / gt[-1]) ** 3, 1) for f in gt],
                      "governors": g["governors"], "default_governor": boot["gpu"]["governor"]}
    return cfg


class Workload:
    """A synthetic model whose latency follows the frequencies: host cycles at the CPU clock plus
    (boards with a GPU) one kernel's cycles at the GPU clock. The same formula makes the profile
    the estimator is fitted on and the fake inference the client runs."""

    HOST_CYCLES_PRE = 30e6
    HOST_CYCLES_POST = 12e6
    LAUNCH_CYCLES = 1.5e6
    GPU_CYCLES = 6e6

    def __init__(self, cpu_table: list[int], gpu_table: list[int] | None) -> None:
        self.cpu_table, self.gpu_table = cpu_table, gpu_table

    def layers_ns(self, cpu_khz: int, gpu_hz: int | None) -> list[dict]:
        hz = cpu_khz * 1e3
        t, layers = 0, []
        pre = int(self.HOST_CYCLES_PRE / hz * 1e9)
        layers.append({"name": "preprocess", "kind": "cpu", "cpu_start_ns": t, "cpu_end_ns": t + pre})
        t += pre
        if gpu_hz is not None:
            launch = int(self.LAUNCH_CYCLES / hz * 1e9)
            run = int(self.GPU_CYCLES / gpu_hz * 1e9)
            layers.append({"name": "kernel", "kind": "gpu", "cpu_start_ns": t, "cpu_end_ns": t + launch,
                           "gpu_start_ns": t + launch, "gpu_end_ns": t + launch + run})
            t += launch + run
        post = int(self.HOST_CYCLES_POST / hz * 1e9)
        layers.append({"name": "postprocess", "kind": "cpu", "cpu_start_ns": t, "cpu_end_ns": t + post})
        return layers

    def latency_ms(self, cpu_khz: int, gpu_hz: int | None) -> float:
        return self.layers_ns(cpu_khz, gpu_hz)[-1]["cpu_end_ns"] / 1e6

    def profile(self) -> dict:
        """Every CPU frequency (x every GPU one) x 3 repeats with +-1% deterministic jitter, in the
        profile format (CPU-only boards: ``gpu_hz: []`` and ``null`` per run)."""
        runs = []
        gpus = self.gpu_table or [None]
        for c in self.cpu_table:
            for g in gpus:
                for r, jitter in enumerate((0.99, 1.0, 1.01)):
                    layers = self.layers_ns(c, g)
                    for layer in layers:
                        for k in ("cpu_start_ns", "cpu_end_ns", "gpu_start_ns", "gpu_end_ns"):
                            if k in layer:
                                layer[k] = int(layer[k] * jitter) + r
                    runs.append({"cpu_khz": c, "gpu_hz": g, "context_len": None,
                                 "latency_ns": layers[-1]["cpu_end_ns"], "layers": layers})
        return {"format": "deadline-dvfs.profile/1", "model": "synthetic", "device": "qemu-guest",
                "frequencies": {"cpu_khz": self.cpu_table, "gpu_hz": self.gpu_table or []}, "runs": runs}

    def deadlines_ms(self) -> list[float]:
        """One deadline per CPU OPP (GPU OPP in proportion): 1.3x that pair's latency plus 4 ms,
        highest first then lowest, so consecutive frames want different pairs."""
        out = []
        n = len(self.cpu_table)
        for i, c in enumerate(self.cpu_table):
            g = None
            if self.gpu_table:
                g = self.gpu_table[round(i * (len(self.gpu_table) - 1) / max(n - 1, 1))]
            out.append(round(1.3 * self.latency_ms(c, g) + 4.0, 2))
        order = []
        lo, hi = 0, len(out) - 1
        while lo <= hi:
            order.append(out[hi])
            if lo != hi:
                order.append(out[lo])
            lo, hi = lo + 1, hi - 1
        return order


# ---- the checks ------------------------------------------------------------------------------
def sweep_values(table: list[int]) -> list[tuple[str, int]]:
    """Every table value (up and down), between entries, above max, below min, repeats."""
    vals = [("table", f) for f in table] + [("table", f) for f in reversed(table)]
    vals += [("between", (a + b) // 2) for a, b in zip(table, table[1:], strict=False)]
    vals += [("above_max", table[-1] + 1), ("above_max", table[-1] * 2)]
    vals += [("below_min", max(table[0] - 1, 1)), ("below_min", 1)]
    vals += [("jump", table[k % 2 * -1]) for k in range(8)]  # extremes back and forth: the widest moves
    mid = table[len(table) // 2]
    vals += [("repeat", mid), ("repeat", mid), ("repeat", table[-1]), ("repeat", table[-1]), ("table", table[0])]
    return vals


def api_checks(domains: dict[str, Domain], board_cfg: dict, state_file: str) -> dict:
    """The backend API against the kernel: save, many applies, read-back, restore."""
    from dvfs_schema.board import BoardConfig
    from sysfs_backends.linux import LinuxBackend

    board = BoardConfig.model_validate(board_cfg)
    backend = LinuxBackend(board, "/", state_file=state_file)
    out: dict = {"applies": 0, "mismatches": [], "readback_mismatches": [], "false_caps": [],
                 "unreachable_misnamed": [],
                 "limit_mismatches": [], "unreachable": [], "errors": [], "log": []}
    backend.save()
    plan = [(name, kind, v) for name in domains for kind, v in sweep_values(domains[name].table())]
    if "gpu" in domains:  # both domains in one apply as well
        ct, gt = domains["cpu"].table(), domains["gpu"].table()
        plan += [("both", "pair", (c, gt[round(i * (len(gt) - 1) / max(len(ct) - 1, 1))]))
                 for i, c in enumerate(ct)]
    for name, kind, value in plan:
        args = ({"cpu_khz": value[0], "gpu_hz": value[1]} if name == "both"
                else {"cpu_khz": value} if name == "cpu" else {"gpu_hz": value})
        try:
            res = backend.apply(**args)
        except Exception as exc:  # a refusal is a finding, not the end of the sweep
            out["errors"].append({"apply": args, "kind": kind, "error": f"{type(exc).__name__}: {exc}"})
            continue
        out["applies"] += 1
        time.sleep(SETTLE_S)
        state = backend.state()
        for dom_name in res.target:
            dom = domains[dom_name]
            truth = dom.truth()
            lo, hi = dom.limits()
            entry = {"apply": args, "kind": kind, "domain": dom_name, "target": res.target[dom_name],
                     "effective": res.effective[dom_name], "truth": truth, "limits": [lo, hi],
                     "readback": state[dom_name].cur, "readback_limits": [state[dom_name].min, state[dom_name].max],
                     "capped": res.capped, "condition": res.conditions.get(dom_name), "notes": res.notes}
            out["log"].append(entry)
            if res.effective[dom_name] != truth:
                out["mismatches"].append(entry)
            if state[dom_name].cur != truth:
                out["readback_mismatches"].append(entry)
            if (state[dom_name].min, state[dom_name].max) != (lo, hi):
                out["limit_mismatches"].append(entry)
            target = res.target[dom_name]
            if res.conditions.get(dom_name) == "capped" and lo <= target <= hi:
                # the backend calls it a cap though the limits allow the target
                out["false_caps"].append(entry)
            if truth != target and lo <= target <= hi:
                out["unreachable"].append(entry)  # a clock that cannot run the OPP: a real case
                if res.conditions.get(dom_name) != "unreachable":
                    out["unreachable_misnamed"].append(entry)
    try:
        out["restore"] = backend.restore()
    finally:
        backend.close()  # gives the board back: the daemons of later steps must be able to own it
    return out


def setpoint_originals(domains: dict[str, Domain]) -> list[str]:
    """Make the original state a ``userspace`` governor with a setpoint at a middle OPP."""
    done = []
    for name, dom in domains.items():
        table = dom.table()
        mid = str(table[(len(table) - 1) // 2])
        for attr, value in ((dom.f_gov, "userspace"), (dom.f_setpoint, mid)):
            err = write(dom.f(attr), value)
            done.append(f"{name}: {attr} = {value}" + (f" ({err})" if err else ""))
    return done


def wait_for_socket(path: str, proc: subprocess.Popen, timeout_s: float) -> float:
    import socket

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} before serving {path}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return round(time.monotonic() - t0, 2)
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.2)
    raise RuntimeError(f"the daemon did not serve {path} within {timeout_s} s")


def start_daemon(work: Path, tag: str, board_path: Path, estimator: Path) -> tuple[subprocess.Popen, dict]:
    sock = str(work / f"{tag}.sock")
    cfg = {"board": str(board_path), "backend": {"kind": "linux", "sysfs_root": "/"}, "socket": sock,
           "models": {"synthetic": {"estimator": str(estimator)}}, "log_level": "info",
           # a write under TCG takes ~50x a real board's: let a frame wait for it, as on hardware
           "governor": {"backend_wait_s": 5.0}}
    cfg_path = work / f"{tag}.governor.yaml"
    cfg_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    log = open(work / f"{tag}.log", "w")
    proc = subprocess.Popen([*dvfs_gov(), "run", "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    info = {"config": cfg, "socket": sock, "pid": proc.pid}
    try:
        info["ready_s"] = wait_for_socket(sock, proc, 240)
    except RuntimeError as exc:  # say why: what the daemon printed
        raise RuntimeError(f"{exc}; its log:\n{log_tail(work / f'{tag}.log')}") from None
    return proc, info


def serve_frames(domains: dict[str, Domain], socket_path: str, workload: Workload, frames: int) -> dict:
    """A small app: before_frame, a fake inference as long as the frequencies really in force
    make it, after_frame. Every decision is compared with the kernel's clock."""
    from governor.client import GovernorClient

    deadlines = workload.deadlines_ms()
    top = {n: dom.table()[-1] for n, dom in domains.items()}
    out: dict = {"frames": 0, "pair_mismatches": [], "infeasible": [], "infeasible_below_top": [], "late": 0,
                 "log": []}
    with GovernorClient(socket_path, timeout_s=60, app="guest") as gov:
        for i in range(frames):
            deadline = deadlines[i % len(deadlines)]
            d = gov.before_frame("synthetic", deadline_ms=deadline)
            now = {n: dom.truth() for n, dom in domains.items()}
            t0 = time.perf_counter()
            time.sleep(workload.latency_ms(now["cpu"], now.get("gpu")) / 1e3)
            latency_ms = (time.perf_counter() - t0) * 1e3
            after = {n: dom.truth() for n, dom in domains.items()}
            gov.after_frame(d["frame"], latency_ms)
            decided = {"cpu": d["cpu_khz"], **({"gpu": d["gpu_hz"]} if "gpu" in domains else {})}
            entry = {"frame": i, "deadline_ms": deadline, "decided": decided, "truth_at_start": now,
                     "truth_at_end": after, "latency_ms": round(latency_ms, 3), "feasible": d["feasible"],
                     "predicted_ms": d["predicted_ms"], "notes": d.get("notes", [])}
            out["log"].append(entry)
            out["frames"] += 1
            out["late"] += latency_ms > deadline
            if any(decided[n] != after[n] or decided[n] != now[n] for n in decided):
                out["pair_mismatches"].append(entry)
            if not d["feasible"]:
                out["infeasible"].append(entry)  # emulator hiccups can make this happen: informational
                if decided != top:
                    # nothing fits, yet not the fastest pair: the daemon believes in a cap that the
                    # kernel (no thermal limits in this guest) does not impose
                    out["infeasible_below_top"].append(entry)
        out["status"] = gov.status()
    return out


def stop_daemon(proc: subprocess.Popen, sig: int, timeout_s: float = 120) -> int | None:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---- main ------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True)
    ap.add_argument("--out", default=os.environ.get("DVFS_RESULTS", "."))
    ap.add_argument("--devfreq", help="devfreq node to drive (default: the first one)")
    ap.add_argument("--frames", type=int, default=24)
    args = ap.parse_args()
    out_dir = Path(args.out)
    work = Path("/tmp/dvfs-work")
    work.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir / "report.json", args.arch)
    report.data["timings_s"]["python_start"] = process_age_s()
    report.save()

    with report.step("discover") as s:
        domains = find_domains(args.devfreq)
        boot = snapshot_all(domains)
        report.data["domains"] = {n: d.describe() for n, d in domains.items()}
        report.data["boot_snapshot"] = boot
        s["ok"] = True
    if "ok" not in report.data["steps"]["discover"]:
        return 3
    board_name = f"qemu_{args.arch}"
    boards = {}
    for mech in ("userspace", "minmax"):
        cfg = board_config(domains, boot, board_name, mech, mech)
        boards[mech] = (cfg, work / f"board_{mech}.yaml")
        boards[mech][1].write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    report.data["board"] = boards["userspace"][0]

    # dvfs-gov status starts now, so its Python start overlaps our imports
    status_proc = subprocess.Popen(
        [*dvfs_gov(), "status", "--board", str(boards["userspace"][1]), "--backend", "linux", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_status = time.monotonic()
    import sysfs_backends.linux  # noqa: F401  (the heavy imports, while status starts)

    with report.step("status") as s:
        stdout, stderr = status_proc.communicate(timeout=300)
        s.update(rc=status_proc.returncode, stderr=stderr[-4000:], seconds=round(time.monotonic() - t_status, 2))
        s["mismatches"] = []
        found = json.loads(stdout) if status_proc.returncode == 0 else None
        s["json"] = found
        if found is not None:
            s["mismatches"] = status_mismatches(domains, boot, found)
        s["restore_diff"] = diff(domains, boot, settled_snapshot(domains))

    workload = Workload(domains["cpu"].table(), domains["gpu"].table() if "gpu" in domains else None)
    profile_path, est_path = work / "synthetic.profile.json", work / "synthetic.est.json"
    profile_path.write_text(json.dumps(workload.profile()))
    fit_proc = subprocess.Popen([*dvfs_gov(), "fit", str(profile_path), "-o", str(est_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t_fit = time.monotonic()

    for mech in ("userspace", "minmax"):
        with report.step(f"api_{mech}") as s:
            s.update(api_checks(domains, boards[mech][0], str(work / f"api_{mech}.state.json")))
            s["restore_diff"] = diff(domains, boot, settled_snapshot(domains))
        after_step(report, domains, boot, work)

    for mech in ("userspace", "minmax"):
        with report.step(f"setpoint_{mech}") as s:
            s["originals_written"] = setpoint_originals(domains)
            originals = settled_snapshot(domains)
            s["originals"] = {n: {k: originals[n].get(k) for k in (d.f_gov, d.f_setpoint, d.f_min, d.f_max,
                                                                      d.f_truth)}
                              for n, d in domains.items()}
            result = api_checks(domains, boards[mech][0], str(work / f"setpoint_{mech}.state.json"))
            s.update({k: result[k] for k in ("applies", "mismatches", "errors", "restore")})
            s["restore_diff"] = diff(domains, originals, settled_snapshot(domains))
            s["back_to_boot"] = reset_to(domains, boot)  # planned: the originals were ours
        after_step(report, domains, boot, work)

    with report.step("write_sequence") as s:
        # one fixed sequence of raw writes, also run against the virtual kernel on the host
        # (tests/kernel/test_real_kernels.py compares the two step by step)
        def raw_write(path: str, value: str) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)

        seq_domains = [{"kind": d.kind, "dir": d.path, "table": d.table(), "governors": d.get(d.f_govs).split()}
                       for d in domains.values()]
        s["domains"] = seq_domains
        s["records"] = run_sequence(read, raw_write, seq_domains)
    after_step(report, domains, boot, work)

    with report.step("fit") as s:
        stdout, _ = fit_proc.communicate(timeout=600)
        s.update(rc=fit_proc.returncode, output=stdout[-4000:], seconds=round(time.monotonic() - t_fit, 2))
        s["profile"] = {"runs": len(workload.profile()["runs"]), "cpu_khz": workload.cpu_table,
                        "gpu_hz": workload.gpu_table or []}
    fitted = fit_proc.returncode == 0 and est_path.exists()

    with report.step("daemon_sigterm") as s:
        if not fitted:
            raise RuntimeError("no estimator: `dvfs-gov fit` failed (see step fit)")
        proc, info = start_daemon(work, "sigterm", boards["minmax"][1], est_path)
        s.update(info)
        try:
            s.update(serve_frames(domains, info["socket"], workload, args.frames))
        finally:
            s["rc"] = stop_daemon(proc, signal.SIGTERM)
            s["log_tail"] = log_tail(work / "sigterm.log")
        s["restore_diff"] = diff(domains, boot, settled_snapshot(domains))
        s["state_files_left"] = state_files()
    after_step(report, domains, boot, work)

    with report.step("daemon_sigkill") as s:
        if not fitted:
            raise RuntimeError("no estimator: `dvfs-gov fit` failed (see step fit)")
        proc, info = start_daemon(work, "sigkill", boards["userspace"][1], est_path)
        s.update(info)
        try:
            s.update(serve_frames(domains, info["socket"], workload, max(args.frames // 2, 6)))
        finally:
            proc.kill()
            proc.wait()
            s["log_tail"] = log_tail(work / "sigkill.log")
        s["pinned_diff"] = diff(domains, boot, settled_snapshot(domains))  # what restore must undo
        s["state_files_before_restore"] = state_files()
        s["restore_cli"] = run_cli(["restore", "--board", str(boards["userspace"][1]), "--backend", "linux"])
        s["restore_diff"] = diff(domains, boot, settled_snapshot(domains))
        s["state_files_left"] = state_files()
    after_step(report, domains, boot, work)

    report.data["final_diff"] = diff(domains, boot, settled_snapshot(domains))
    report.data["summary"] = summary(report.data["steps"])
    report.data["timings_s"]["driver_total"] = round(time.monotonic() - report.t0, 2)
    report.data["done"] = True
    report.save()
    return 0


def process_age_s() -> float | None:
    """How long this process has existed (its start time in /proc against the uptime): what one
    Python start with our imports costs in this guest."""
    try:
        start_ticks = int(read("/proc/self/stat").rsplit(")", 1)[1].split()[19])
        uptime = float(read("/proc/uptime").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)


def summary(steps: dict) -> dict:
    """The figures: applies and frames against the kernel's clock, restores against the originals."""
    api = [v for k, v in steps.items() if k.startswith(("api_", "setpoint_")) and "applies" in v]
    daemons = [v for k, v in steps.items() if k.startswith("daemon_") and "frames" in v]
    restores = [v for v in steps.values() if "restore_diff" in v]
    return {
        "applies": sum(v["applies"] for v in api),
        "apply_mismatches": sum(len(v["mismatches"]) for v in api),
        "false_caps": sum(len(v.get("false_caps", [])) for v in api),
        "frames": sum(v["frames"] for v in daemons),
        "frame_pair_mismatches": sum(len(v["pair_mismatches"]) for v in daemons),
        "restores_checked": len(restores),
        "restores_exact": sum(not v["restore_diff"] for v in restores),
        "steps_failed": sorted(k for k, v in steps.items() if "error" in v),
    }


def state_files() -> list[str]:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "deadline-dvfs"
    # saved-state files (and their temporaries); lock files may stay, they hold nothing
    return sorted(str(p) for p in base.glob("*") if p.suffix in (".json", ".tmp")) if base.is_dir() else []


def after_step(report: Report, domains: dict[str, Domain], boot: dict, work: Path) -> None:
    """Back to the boot state with raw writes if a step left anything behind (recorded)."""
    done = reset_to(domains, boot)
    if done:
        left = diff(domains, boot, settled_snapshot(domains))
        report.data["resets"].append({"after": list(report.data["steps"])[-1], "writes": done,
                                      "still_different": left})
        report.save()


def status_mismatches(domains: dict[str, Domain], boot: dict, found: dict) -> list[dict]:
    """What ``dvfs-gov status --json`` says against what /sys says."""
    out = []

    def check(field: str, said, truth) -> None:
        if said != truth:
            out.append({"field": field, "status": said, "sysfs": truth})

    check("domains", sorted(found.get("domains", {})), sorted(domains))
    for name, dom in domains.items():
        info, state = found.get("domains", {}).get(name), found.get("states", {}).get(name)
        if info is None or state is None:
            continue
        ref = boot[name]
        check(f"{name}.frequencies", info["frequencies"], dom.table())
        check(f"{name}.governors", info["governors"], ref[dom.f_govs].split())
        check(f"{name}.governor", state["governor"], ref[dom.f_gov])
        check(f"{name}.min", state["min"], int(ref[dom.f_min]))
        check(f"{name}.max", state["max"], int(ref[dom.f_max]))
        if ref[dom.f_gov] in DYNAMIC_OK:
            check(f"{name}.cur", state["cur"], int(ref[dom.f_truth]))
        if dom.kind == "cpufreq":
            check(f"{name}.transition_latency_ns", info["transition_latency_ns"],
                  int(ref["cpuinfo_transition_latency"]))
            check(f"{name}.hw_min", info["hw_min"], int(ref["cpuinfo_min_freq"]))
            check(f"{name}.hw_max", info["hw_max"], int(ref["cpuinfo_max_freq"]))
            check(f"{name}.cpus", info["cpus"], [int(x) for x in ref["related_cpus"].split()])
    return out


if __name__ == "__main__":
    sys.exit(main())
