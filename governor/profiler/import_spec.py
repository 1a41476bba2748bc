"""What a user says about each imported file: at which clocks it was recorded, and the board's tables.

Trace importers (``import-trace``, ``import-ort``) read files that carry timings but no clocks: the
user labels each file with the frequencies in force when it was recorded. Two spellings:

* positional, as before: ``FILE@CPU_KHZ,GPU_HZ[,CONTEXT_LEN]``;
* named, any order: ``FILE@cpu=KHZ,gpu=HZ,mem=LEVEL,ctx=N`` (``cpu`` required; ``gpu`` required
  on a board with a GPU; ``mem`` is the memory domain's level in its kernel node's unit).

The board's tables come from ``--board NAME`` (a bundled or user board config: every domain, its
table and unit) or from ``--cpu-table/--gpu-table/--mem-table``. A table that is given is the
truth: a label outside it is refused, because a frequency the board cannot run would make the
estimator's grid wrong. A domain with no table given is learned from the labels (the values seen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from governor.profiler.trace_import import TracedRun, TraceError

NAMED_KEYS = ("cpu", "gpu", "mem", "ctx")
POSITIONAL = "FILE@CPU_KHZ,GPU_HZ[,CONTEXT_LEN]"
NAMED = "FILE@cpu=KHZ,gpu=HZ,mem=LEVEL,ctx=N"
TABLE_OPTION = {"cpu": "--cpu-table", "gpu": "--gpu-table", "mem": "--mem-table"}
DOMAIN_WORD = {"cpu": "CPU", "gpu": "GPU", "mem": "memory"}


@dataclass
class ImportTables:
    """Each domain's table as the user gave it: ``None`` (not given: learned from the labels),
    ``[]`` (the board has no such domain) or the frequencies; ``origin`` names where they came from,
    ``units`` each domain's unit, for messages."""

    tables: dict[str, list[int] | None]
    origin: dict[str, str]
    units: dict[str, str] = field(default_factory=lambda: {"cpu": "kHz", "gpu": "Hz", "mem": "its node's unit"})

    def allowed(self, name: str) -> str:
        table = self.tables[name] or []
        return f"{self.origin[name]} allows {', '.join(str(v) for v in table)} ({self.units[name]})"


def _ints(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise TraceError(f"{option}: write integers separated by commas, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise TraceError(f"{option}: frequencies are positive integers, got {text!r}")
    return sorted(set(values))


def board_tables(board: str | None, cpu_table: str | None, gpu_table: str | None,
                 mem_table: str | None) -> ImportTables:
    """The tables from ``--board`` or from the ``--*-table`` options (not both: which would win?)."""
    given = {"cpu": cpu_table, "gpu": gpu_table, "mem": mem_table}
    if board is not None:
        both = [TABLE_OPTION[n] for n, text in given.items() if text]
        if both:
            raise TraceError(f"--board {board} and {', '.join(both)}: give the board or the tables, not both "
                             "(the board config already has every table)")
        from dvfs_schema.loading import load_board

        cfg = load_board(board)
        domains = {d.name: d for d in cfg.domains}
        return ImportTables(
            tables={n: list(domains[n].frequencies) if n in domains else [] for n in TABLE_OPTION},
            origin={n: f"board {cfg.name}'s {DOMAIN_WORD[n]} domain ({domains[n].node})" if n in domains
                    else f"board {cfg.name}" for n in TABLE_OPTION},
            units={n: domains[n].unit if n in domains else "-" for n in TABLE_OPTION})
    return ImportTables(tables={n: _ints(text, TABLE_OPTION[n]) for n, text in given.items()},
                        origin=dict(TABLE_OPTION))


def _value(spec: str, key: str, text: str, form: str = NAMED) -> int:
    try:
        value = int(text)
    except ValueError:
        label = f"{key}={text!r}" if form == NAMED else f"{key} {text!r}"
        raise TraceError(f"{spec!r}: {label} is not an integer (write {form})") from None
    if value < 0 or (value == 0 and key != "ctx"):
        raise TraceError(f"{spec!r}: {key}={value} must be {'>= 0' if key == 'ctx' else 'positive'}")
    return value


def parse_spec(spec: str, tables: ImportTables) -> TracedRun:
    """One ``FILE@...`` argument as a ``TracedRun``; a label the board cannot have is refused here,
    naming the argument, the key and the allowed values."""
    path, sep, labels = spec.rpartition("@")
    if not sep or not path or not labels:
        raise TraceError(f"{spec!r}: write {NAMED} (or {POSITIONAL})")
    parts = labels.split(",")
    named = ["=" in p for p in parts]
    if any(named) and not all(named):
        raise TraceError(f"{spec!r}: mixes positional and named labels; write every label as key=value "
                         f"({NAMED}) or none ({POSITIONAL})")
    if all(named):
        values: dict[str, int] = {}
        for part in parts:
            key, _, text = part.partition("=")
            key = key.strip().lower()
            if key not in NAMED_KEYS:
                raise TraceError(f"{spec!r}: unknown key {key!r}; allowed: {', '.join(NAMED_KEYS)}")
            if key in values:
                raise TraceError(f"{spec!r}: {key}= given twice")
            values[key] = _value(spec, key, text.strip())
        if "cpu" not in values:
            raise TraceError(f"{spec!r}: cpu= is required ({NAMED})")
    else:
        if len(parts) not in (2, 3):
            raise TraceError(f"{spec!r}: write {POSITIONAL} or {NAMED}")
        keys = ("cpu", "gpu", "ctx")[:len(parts)]
        values = {k: _value(spec, k, p.strip(), POSITIONAL) for k, p in zip(keys, parts, strict=False)}
        if tables.tables["mem"]:
            raise TraceError(f"{spec!r}: the positional form has no memory level but {tables.origin['mem']} "
                             f"has one; write {NAMED}")
    for name in ("cpu", "gpu", "mem"):
        table = tables.tables[name]
        if name not in values:
            if table and name != "mem":  # a board's GPU must be labelled; mem may be left out by all
                raise TraceError(f"{spec!r}: {name}= is required: {tables.allowed(name)}")
            continue
        if table == []:
            raise TraceError(f"{spec!r}: {name}={values[name]} given but {tables.origin[name]} has no "
                             f"{DOMAIN_WORD[name]} domain; drop {name}=")
        if table and values[name] not in table:
            raise TraceError(f"{spec!r}: {name}={values[name]} is not a level of the table: {tables.allowed(name)}")
    return TracedRun(path, values["cpu"], values.get("gpu"), values.get("ctx"), values.get("mem"))


def profile_tables(runs: list[TracedRun], tables: ImportTables) -> dict[str, list[int]]:
    """The profile's tables (``build_profile``'s ``tables``) once every file is labelled. A domain is
    labelled in every file or in none: a profile cannot say which memory level an unlabelled run had."""
    out: dict[str, list[int]] = {}
    for name, key in (("cpu", "cpu_khz"), ("gpu", "gpu_hz"), ("mem", "mem_hz")):
        labelled = [r for r in runs if getattr(r, key) is not None]
        if labelled and len(labelled) != len(runs):
            missing = next(r for r in runs if getattr(r, key) is None)
            raise TraceError(f"{missing.source!r} has no {name}= but {labelled[0].source!r} has "
                             f"{name}={getattr(labelled[0], key)}: label every file with {name}= or none")
        if name == "mem" and tables.tables["mem"] is not None and tables.origin["mem"] == "--mem-table" \
                and not labelled:
            raise TraceError(f"--mem-table given but no file says its level: write {NAMED}")
        given = tables.tables[name]
        out[name] = list(given) if given else sorted({getattr(r, key) for r in labelled})
        if name == "mem" and not labelled:
            out[name] = []  # the board has a memory domain but these traces do not vary it
    return out
