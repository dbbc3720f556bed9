"""Processes as the benchmarks see them from outside: a server's process tree, its CPU and memory
from ``/proc``, and which cores it and its load generators are pinned to."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a multi-worker server's workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the whole process tree (exited children included)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime
    return total


def rss_mb(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{member}/status").read_text().splitlines()
            total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    return total


# Cores ---------------------------------------------------------------------------------------------


def split_cores(server_cores: int) -> tuple[list[int], list[int]]:
    """The server's cores and the load generators' (shared with the server only if there are no others)."""
    cores = sorted(os.sched_getaffinity(0))
    server = cores[:server_cores]
    load = cores[server_cores:] or cores
    return server, load


def pin(pid: int, cores: list[int]) -> None:
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(member, cores)


def stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM (a server drains), then SIGKILL if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
