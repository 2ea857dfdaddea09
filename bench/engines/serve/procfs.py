"""What /proc says about a process and the machine: CPU time, memory, children, load."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def sched_ns(pid: int) -> int:
    """Nanoseconds on CPU of every thread of ``pid`` (schedstat: finer than clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def proc_status_kb(pid: int, key: str, missing: int | None = None) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM); ``missing`` when there is none (a
    process that has exited lists no memory), a KeyError when ``missing`` is None."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    if missing is None:
        raise KeyError(key)
    return missing


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            text = (entry / "stat").read_text()
            if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def system_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together, from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return user + nice + system + irq + softirq + steal


def children_ticks() -> int:
    """CPU ticks of this process's reaped children so far."""
    times = os.times()
    return round((times.children_user + times.children_system) * CLK_TCK)


def machine_line() -> str:
    """The CPU model and count, and the kernel release."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} x {os.cpu_count()} CPUs, Linux {platform.release()}"


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure_idle(pid: int, seconds: float) -> tuple[float, float]:
    """(s of CPU per minute from utime+stime, the same from schedstat) over ``seconds`` idle."""
    t0, n0 = cpu_ticks(pid), sched_ns(pid)
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    t1, n1 = cpu_ticks(pid), sched_ns(pid)
    per_min = 60.0 / elapsed
    return (t1 - t0) / CLK_TCK * per_min, (n1 - n0) / 1e9 * per_min
