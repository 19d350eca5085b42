"""What a benchmark ran on: cores, load, memory, OS, Python and library versions; and
the resident memory of a process (for the server's memory per connection).

Figures from a loaded machine mean little on their own, so every document records the
load average at its start and end next to the figures.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict

__all__ = [
    "DEFAULT_LIBRARIES",
    "MachineInfo",
    "collect_machine",
    "load_average",
    "parse_status_kib",
    "raise_open_files_limit",
    "rss_bytes",
]

DEFAULT_LIBRARIES: tuple[str, ...] = (
    "websockets",
    "grpcio",
    "protobuf",
    "pyjwt",
    "cryptography",
    "pydantic",
    "sqlalchemy",
    "aiosqlite",
    "structlog",
    "matplotlib",
)

_STATUS_LINE = re.compile(r"^(?P<key>\w+):\s+(?P<value>\d+)\s*kB$", re.MULTILINE)


class MachineInfo(BaseModel):
    """The machine and software of one benchmark run."""

    model_config = ConfigDict(frozen=True)

    cores: int | None
    usable_cores: int
    cpu_model: str | None
    memory_total_bytes: int | None
    load_average_start: tuple[float, float, float]
    os: str
    kernel: str
    python: str
    python_implementation: str
    libraries: dict[str, str]


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _memory_total() -> int | None:
    try:
        kib = parse_status_kib(Path("/proc/meminfo").read_text()).get("MemTotal")
    except OSError:
        return None
    return kib * 1024 if kib is not None else None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect_machine(libraries: Iterable[str] = DEFAULT_LIBRARIES) -> MachineInfo:
    """The current machine, its load now, and the versions of ``libraries``."""
    return MachineInfo(
        cores=os.cpu_count(),
        usable_cores=len(os.sched_getaffinity(0)),
        cpu_model=_cpu_model(),
        memory_total_bytes=_memory_total(),
        load_average_start=load_average(),
        os=platform.platform(),
        kernel=platform.release(),
        python=sys.version.split()[0],
        python_implementation=platform.python_implementation(),
        libraries={name: _version(name) for name in libraries},
    )


def parse_status_kib(text: str) -> dict[str, int]:
    """The ``Key:  N kB`` lines of ``/proc/<pid>/status`` or ``/proc/meminfo``, in KiB."""
    return {match["key"]: int(match["value"]) for match in _STATUS_LINE.finditer(text)}


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` now (``VmRSS``), in bytes."""
    fields = parse_status_kib(Path(f"/proc/{pid}/status").read_text())
    if "VmRSS" not in fields:
        raise OSError(f"process {pid} reports no VmRSS (a zombie?)")
    return fields["VmRSS"] * 1024


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit towards ``wanted`` (children inherit
    it); returns the limit now in force. Never above the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
