"""What machine a benchmark ran on: the common part every bench script prints.

Lives beside the scripts (each runs with ``scripts/`` first on ``sys.path``).
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """CPU model and counts, kernel, Python/numpy/numba versions, load average now."""
    import numba
    import numpy

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "allowed_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "load_avg_at_start": list(os.getloadavg()),
    }
