"""Print each real-kernel guest's boot and run times at the end of the session."""

from __future__ import annotations

from tests.kernel import harness


def pytest_terminal_summary(terminalreporter) -> None:
    if not harness.TIMINGS:
        return
    terminalreporter.section("real-kernel guests")
    for arch, t in sorted(harness.TIMINGS.items()):
        steps = ", ".join(f"{k.removeprefix('guest_')} {v}" for k, v in t.items() if k.startswith("guest_"))
        terminalreporter.write_line(f"{arch}: boot {t['boot_s']} s, run {t['run_s']} s, wall {t['wall_s']} s"
                                    + (f" (guest steps, s: {steps})" if steps else ""))
        if t.get("summary"):
            terminalreporter.write_line(f"{arch}: " + ", ".join(f"{k} {v}" for k, v in t["summary"].items()))
    terminalreporter.write_line(f"reports and consoles: {harness.cache_dir() / 'last-run'}")
