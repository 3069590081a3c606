"""CPU time by thread, and how busy the machine was, read from /proc (Linux).

For benchmarks that say where the CPU went and not only how fast something ran: on a small
machine a throughput figure is a CPU budget, and the split tells which part to work on.
Elsewhere (no /proc) the readers return empty results and the benchmarks print no split.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_NUMBERED = re.compile(r"[_-]\d+(?= \(|$)")


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _stat_cpu(path: str) -> tuple[float, float]:
    """(user, system) CPU seconds from a /proc …/stat file; OSError if it cannot be read."""
    stat = Path(path).read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": the comm may hold spaces
    tick = _clock_ticks()
    return int(fields[11]) / tick, int(fields[12]) / tick


def thread_cpu() -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of this process's live threads, by thread name; the numbered
    threads of one pool ("ccn-reader_0", "ccn-reader_1"; "Thread-3 (run)") are summed under one name."""
    out: dict[str, tuple[float, float]] = {}
    for thread in threading.enumerate():
        try:
            user, system = _stat_cpu(f"/proc/self/task/{thread.native_id}/stat")
        except OSError:
            continue
        name = _NUMBERED.sub("", thread.name)
        before = out.get(name, (0.0, 0.0))
        out[name] = (before[0] + user, before[1] + system)
    return out


def cores_used(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], seconds: float
) -> dict[str, dict[str, float]]:
    """Cores each thread used between two ``thread_cpu()`` readings ``seconds`` apart (threads
    that ended in between are not counted); threads under 0.5 % of a core are left out."""
    used: dict[str, dict[str, float]] = {}
    for name, (user, system) in after.items():
        user0, system0 = before.get(name, (0.0, 0.0))
        u, s = (user - user0) / seconds, (system - system0) / seconds
        if u + s >= 0.005:
            used[name] = {"user": round(u, 3), "sys": round(s, 3)}
    return dict(sorted(used.items(), key=lambda kv: -(kv[1]["user"] + kv[1]["sys"])))


def machine_jiffies() -> tuple[int, int] | None:
    """(all, idle) jiffies of every CPU since boot; None without /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:]]
    return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait


def busy_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of all CPUs' time that was busy between two ``machine_jiffies()`` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round(1 - (after[1] - before[1]) / (after[0] - before[0]), 3)


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None without /proc or once it is gone."""
    try:
        return sum(_stat_cpu(f"/proc/{pid}/stat"))
    except OSError:
        return None
