"""What the benchmarks read of a process from /proc: CPU seconds and resident memory."""
from __future__ import annotations

import os


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` (all its threads)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
