"""Machine facts and the resident-memory reader."""

from __future__ import annotations

import os
import resource

from tools.bench.machine import (
    collect_machine,
    parse_status_kib,
    raise_open_files_limit,
    rss_bytes,
)

STATUS = """Name:\tpython3
State:\tS (sleeping)
VmPeak:\t  300000 kB
VmRSS:\t   81234 kB
RssAnon:\t   60000 kB
Threads:\t4
"""


def test_parse_status_reads_the_kib_lines_only() -> None:
    fields = parse_status_kib(STATUS)
    assert fields == {"VmPeak": 300000, "VmRSS": 81234, "RssAnon": 60000}


def test_rss_of_this_process_is_positive_and_grows_with_memory() -> None:
    before = rss_bytes(os.getpid())
    ballast = bytearray(64 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page
    after = rss_bytes(os.getpid())
    assert before > 0
    assert after - before >= 32 * 1024 * 1024
    del ballast


def test_machine_info_names_cores_and_versions() -> None:
    info = collect_machine(libraries=("pydantic", "surely-not-installed-dist"))
    assert info.usable_cores >= 1
    assert info.cores is None or info.cores >= info.usable_cores
    assert info.python.count(".") == 2
    assert info.libraries["pydantic"][0].isdigit()
    assert info.libraries["surely-not-installed-dist"] == "not installed"
    assert len(info.load_average_start) == 3


def test_open_files_limit_never_passes_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    now = raise_open_files_limit(soft)
    assert now == soft
    if hard != resource.RLIM_INFINITY:
        assert raise_open_files_limit(hard + 1000) <= hard
