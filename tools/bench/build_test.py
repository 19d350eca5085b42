"""The build benchmark's pure parts: Bazel output parsing, the touch, the copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench.build import (
    TOUCH_COMMENT,
    BuildDocument,
    BuildParameters,
    PhaseResult,
    append_touch_comment,
    child_environment,
    parse_args,
    parse_test_output,
    remove_tree,
    workspace_files,
)
from tools.bench.machine import collect_machine

COLD = """\
INFO: Analyzed 6 targets (52 packages loaded, 1630 targets configured).
INFO: Found 3 targets and 3 test targets...
INFO: Elapsed time: 95.310s, Critical Path: 40.12s
INFO: 41 processes: 12 internal, 29 linux-sandbox.
INFO: Build completed successfully, 41 total actions
//context:mypy                                                           PASSED in 12.0s
//context:tests                                                          PASSED in 3.1s
//tools/pytest:sharding_test                                             PASSED in 1.9s
  Stats over 3 runs: max = 1.9s, min = 1.2s, avg = 1.5s, dev = 0.3s

Executed 3 out of 3 tests: 3 tests pass.
INFO: Build completed successfully, 41 total actions
"""

CACHED = """\
INFO: Elapsed time: 0.410s, Critical Path: 0.01s
INFO: 1 process: 1 internal.
//context:mypy                                                  (cached) PASSED in 12.0s
//context:tests                                                 (cached) PASSED in 3.1s
//tools/pytest:sharding_test                                    (cached) PASSED in 1.9s

Executed 0 out of 3 tests: 3 tests pass.
"""

TOUCHED = """\
INFO: 5 processes: 1 internal, 4 linux-sandbox.
//context:mypy                                                           PASSED in 11.0s
//context:tests                                                          FAILED in 3.0s
//tools/pytest:sharding_test                                    (cached) PASSED in 1.9s

Executed 2 out of 3 tests: 2 tests pass and 1 fails locally.
"""


def test_cold_output_counts_fresh_results() -> None:
    summary = parse_test_output(COLD)
    assert (summary.tests_executed, summary.tests_total) == (3, 3)
    assert summary.targets_passed_fresh == 3
    assert summary.targets_passed_cached == 0
    assert summary.processes == 41


def test_cached_output_counts_cached_results() -> None:
    summary = parse_test_output(CACHED)
    assert (summary.tests_executed, summary.tests_total) == (0, 3)
    assert summary.targets_passed_cached == 3
    assert summary.targets_passed_fresh == 0
    assert summary.processes == 1


def test_touched_output_counts_reruns_and_failures() -> None:
    summary = parse_test_output(TOUCHED)
    assert summary.tests_executed == 2
    assert summary.targets_passed_fresh == 1
    assert summary.targets_passed_cached == 1
    assert summary.targets_failed == 1


def test_output_without_a_summary_has_no_counts() -> None:
    summary = parse_test_output("ERROR: no such package 'nowhere'\n")
    assert summary.tests_executed is None
    assert summary.tests_total is None
    assert summary.processes is None


def test_one_test_is_singular_in_bazel_output() -> None:
    assert parse_test_output("Executed 1 out of 1 test: 1 test passes.").tests_executed == 1


def test_touch_appends_a_formatted_comment_and_keeps_the_code(tmp_path: Path) -> None:
    source = tmp_path / "leaf.py"
    source.write_text('"""A leaf."""\n\nVALUE = 1\n')
    append_touch_comment(source)
    text = source.read_text()
    assert text == f'"""A leaf."""\n\nVALUE = 1\n\n\n{TOUCH_COMMENT}\n'
    # The touched file must stay formatted, or //:ruff would fail the touched phase.
    subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--isolated", "--check", str(source)],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )


def test_child_environment_drops_what_an_enclosing_bazel_set() -> None:
    env = child_environment(
        {
            "PATH": "/usr/bin",
            "HOME": "/root",
            "RUNFILES_DIR": "/x",
            "PYTHONPATH": "/x",
            "TEST_TMPDIR": "/t",
            "BUILD_WORKSPACE_DIRECTORY": "/w",
            "BAZEL_REAL": "/usr/bin/bazel-real",
        }
    )
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "BAZEL_REAL": "/usr/bin/bazel-real"}


def test_workspace_files_outside_git_skip_outputs_and_caches(tmp_path: Path) -> None:
    (tmp_path / "WORKSPACE").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_text("")
    (tmp_path / "bazel-out").mkdir()
    (tmp_path / "bazel-out" / "big").write_text("")
    assert workspace_files(tmp_path) == [Path("WORKSPACE"), Path("pkg/a.py")]


def test_workspace_files_in_git_include_untracked_but_not_ignored(tmp_path: Path) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.fail("git is a required system package (tools/system-packages.txt)")
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True, timeout=60)
    (tmp_path / ".gitignore").write_text("*.pyc\n/bazel-*\n")
    (tmp_path / "WORKSPACE").write_text("")
    (tmp_path / "new.py").write_text("")
    (tmp_path / "old.pyc").write_text("")
    assert workspace_files(tmp_path) == [Path(".gitignore"), Path("WORKSPACE"), Path("new.py")]


def test_remove_tree_removes_read_only_directories(tmp_path: Path) -> None:
    locked = tmp_path / "out" / "locked"
    locked.mkdir(parents=True)
    (locked / "file").write_text("x")
    (locked / "file").chmod(0o444)
    locked.chmod(0o555)
    remove_tree(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_document_shape() -> None:
    phases = [
        PhaseResult(phase=name, wall_seconds=s, exit_code=0, summary=parse_test_output(text))
        for name, s, text in (("cold", 95.3, COLD), ("cached", 0.4, CACHED))
    ]
    document = BuildDocument(
        started_at="2025-01-31T12:00:00+00:00",
        duration_seconds=100.0,
        machine=collect_machine(libraries=()),
        load_average_end=(1.0, 1.0, 1.0),
        parameters=BuildParameters(
            targets=("//context/...",),
            jobs=2,
            touch="context/api.py",
            bazel_args=(),
            bazel_version="4.2.3",
            files_copied=120,
        ),
        phases=phases,
    )
    parsed = json.loads(document.model_dump_json())
    assert [phase["phase"] for phase in parsed["phases"]] == ["cold", "cached"]
    assert parsed["phases"][1]["summary"]["tests_executed"] == 0
    assert parsed["parameters"]["jobs"] == 2
    assert parsed["machine"]["usable_cores"] >= 1


def test_defaults_and_bounds() -> None:
    args = parse_args([])
    assert args.targets == ["//..."]
    assert args.touch == "websocket/emitter/sanitize.py"
    for argv in (["--jobs", "0"], ["--touch", "/etc/passwd"], ["--touch", "../x.py"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
