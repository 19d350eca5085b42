"""``tools/bazel run //tools/bench:build -- [--targets //...]``: how long ``bazel test`` takes.

Three phases on a private copy of the workspace, with an output base of its own under a
temporary directory (the invoking workspace's Bazel server, output base and cache are
never touched):

1. **cold** - the first ``bazel test`` of the copy: fetching the external repositories
   (the hash-pinned wheels are installed by pip, which may serve them from its own
   download cache), building and running every test;
2. **cached** - the same command again: everything should come from the local cache;
3. **touched** - after appending a comment to one file of a leaf package (``--touch``,
   default ``websocket/emitter/sanitize.py``): what depends on it rebuilds and re-runs.

For each phase: the wall time, the exit code, how many tests were executed out of how
many (Bazel's ``Executed N out of M tests``), how many test targets passed fresh and how
many from the cache, and the number of processes Bazel ran. The copy holds the tracked
and untracked-but-not-ignored files of the workspace (``git ls-files``), so uncommitted
work is measured too.

This takes minutes (the cold phase of ``//...`` most of all): use ``--targets`` for a
smaller set, ``--jobs`` to bound parallelism. Each Bazel invocation is bounded by
``--timeout``; the copy's Bazel server is shut down and the temporary directory removed at
the end (``--keep`` keeps it). Prints one JSON document and writes a PNG chart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.bench.chart import draw_build_chart
from tools.bench.machine import MachineInfo, collect_machine, load_average

__all__ = [
    "BuildDocument",
    "BuildParameters",
    "PhaseResult",
    "TestSummary",
    "append_touch_comment",
    "main",
    "parse_args",
    "parse_test_output",
    "workspace_files",
]

DEFAULT_TOUCH = "websocket/emitter/sanitize.py"
TOUCH_COMMENT = "# touched by tools/bench/build.py"
PhaseName = Literal["cold", "cached", "touched"]

_EXECUTED = re.compile(r"Executed (?P<executed>\d+) out of (?P<total>\d+) tests?\b")
_PROCESSES = re.compile(r"^INFO: (?P<count>\d+) process(?:es)?\b", re.MULTILINE)
_TARGET_RESULT = re.compile(
    r"^//\S+\s+(?P<cached>\(cached\)\s+)?(?P<status>PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS)",
    re.MULTILINE,
)
# Variables of an enclosing `bazel run` / `bazel test` that must not reach the copy's Bazel.
_DROPPED_ENV_PREFIXES = ("RUNFILES_", "TEST_", "BUILD_WORKSPACE_", "BUILD_WORKING_", "PYTHON")


class TestSummary(BaseModel):
    """What Bazel's output says about the tests of one invocation."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(frozen=True)

    tests_executed: int | None
    tests_total: int | None
    targets_passed_fresh: int
    targets_passed_cached: int
    targets_failed: int
    processes: int | None


class PhaseResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    phase: PhaseName
    wall_seconds: float
    exit_code: int
    summary: TestSummary
    #: The end of Bazel's output when it did not succeed.
    log_tail: str | None = None


class BuildParameters(BaseModel):
    model_config = ConfigDict(frozen=True)

    targets: tuple[str, ...]
    jobs: int | None
    touch: str
    bazel_args: tuple[str, ...]
    bazel_version: str | None
    files_copied: int


class BuildDocument(BaseModel):
    """The build benchmark's JSON output."""

    model_config = ConfigDict(frozen=True)

    benchmark: Literal["build"] = "build"
    started_at: str
    duration_seconds: float
    machine: MachineInfo
    load_average_end: tuple[float, float, float]
    parameters: BuildParameters
    phases: list[PhaseResult]
    chart: str | None = None
    notes: list[str] = Field(default_factory=list)


# -- pure parts ----------------------------------------------------------------------------


def parse_test_output(text: str) -> TestSummary:
    """The test counts of one ``bazel test`` output (the last summary line wins)."""
    executed = list(_EXECUTED.finditer(text))
    processes = list(_PROCESSES.finditer(text))
    fresh = cached = failed = 0
    for match in _TARGET_RESULT.finditer(text):
        if match["status"] in ("PASSED", "FLAKY"):
            if match["cached"]:
                cached += 1
            else:
                fresh += 1
        else:
            failed += 1
    return TestSummary(
        tests_executed=int(executed[-1]["executed"]) if executed else None,
        tests_total=int(executed[-1]["total"]) if executed else None,
        targets_passed_fresh=fresh,
        targets_passed_cached=cached,
        targets_failed=failed,
        processes=int(processes[-1]["count"]) if processes else None,
    )


def append_touch_comment(path: Path) -> None:
    """Append a comment that changes the file's content but not its meaning (and keeps
    it formatted: two blank lines before a trailing module-level comment)."""
    text = path.read_text()
    path.write_text(text.rstrip("\n") + f"\n\n\n{TOUCH_COMMENT}\n")


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without what an enclosing Bazel command set for its own child."""
    return {
        key: value for key, value in environ.items() if not key.startswith(_DROPPED_ENV_PREFIXES)
    }


# -- the workspace copy --------------------------------------------------------------------

_SKIPPED_DIRS = frozenset({".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".hypothesis"})


def workspace_files(workspace: Path) -> list[Path]:
    """The workspace's files, relative: tracked and untracked-but-not-ignored ones when it
    is a git checkout, else every file outside Bazel's and tools' output directories."""
    if (workspace / ".git").exists():
        git = shutil.which("git")
        if git is None:
            raise OSError("git is needed to list the files of a git checkout")
        listed = subprocess.run(
            [
                git,
                "-C",
                str(workspace),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout.decode()
        names = sorted({name for name in listed.split("\0") if name})
        return [Path(name) for name in names if (workspace / name).is_file()]
    files: list[Path] = []
    for root, dirs, names in os.walk(workspace):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("bazel-")]
        for name in names:
            full = Path(root) / name
            if full.is_file() and not full.is_symlink():
                files.append(full.relative_to(workspace))
    return sorted(files)


def copy_workspace(workspace: Path, destination: Path) -> int:
    files = workspace_files(workspace)
    for relative in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(workspace / relative, target)
    return len(files)


def _make_writable_and_retry(function: Callable[..., Any], path: str, _exc: Any) -> None:
    # Bazel's output base holds read-only directories; make the parent and the path
    # writable, then retry the removal.
    for item in (os.path.dirname(path), path):
        with contextlib.suppress(OSError):
            os.chmod(item, os.stat(item).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
    function(path)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, onerror=_make_writable_and_retry)


# -- running Bazel -------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"build: {message}", file=sys.stderr, flush=True)


class _Bazel:
    """The copy's Bazel, with an output base of its own."""

    def __init__(self, bazel: Path, copy: Path, output_base: Path, logs: Path) -> None:
        self._startup = [str(bazel), f"--output_base={output_base}", "--max_idle_secs=600"]
        self._copy = copy
        self._logs = logs
        self._env = child_environment(os.environ)

    def test(
        self, phase: PhaseName, targets: Sequence[str], extra: Sequence[str], timeout: float
    ) -> PhaseResult:
        command = [
            *self._startup,
            "test",
            "--color=no",
            "--curses=no",
            *extra,
            "--",
            *targets,
        ]
        log_path = self._logs / f"{phase}.log"
        _say(f"{phase}: {' '.join(command[1:])}")
        started = time.monotonic()
        with log_path.open("w") as log:
            try:
                code = subprocess.run(
                    command,
                    cwd=self._copy,
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
        wall = time.monotonic() - started
        text = log_path.read_text(errors="replace")
        _say(f"{phase}: {wall:.1f}s, exit code {code}")
        return PhaseResult(
            phase=phase,
            wall_seconds=wall,
            exit_code=code,
            summary=parse_test_output(text),
            log_tail=None if code == 0 else text[-3000:],
        )

    def shutdown(self) -> None:
        subprocess.run(
            [*self._startup, "shutdown"],
            cwd=self._copy,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )


def _default_workspace() -> Path:
    return Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or ".").resolve()


def _default_chart_path() -> Path:
    return _default_workspace() / "bench-results" / "build.png"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build", description="bazel test: cold, all cached, one leaf package touched."
    )
    parser.add_argument(
        "--targets", nargs="+", default=["//..."], help="target patterns (default //...)"
    )
    parser.add_argument("--jobs", type=int, help="Bazel --jobs (default: Bazel's)")
    parser.add_argument("--touch", default=DEFAULT_TOUCH, help=f"file to edit ({DEFAULT_TOUCH})")
    parser.add_argument(
        "--bazel-arg", action="append", default=[], help="extra `bazel test` argument"
    )
    parser.add_argument("--workspace", type=Path, help="default: the invoking workspace")
    parser.add_argument("--bazel", type=Path, help="default: the copy's tools/bazel")
    parser.add_argument("--timeout", type=float, default=3600.0, help="bound of each Bazel run, s")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--chart", type=Path, help="PNG path (default bench-results/build.png)")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs is not None and not 1 <= args.jobs <= 256:
        parser.error("--jobs must be within 1..256")
    if not 10 <= args.timeout <= 6 * 3600:
        parser.error("--timeout must be within 10..21600 seconds")
    touch = Path(args.touch)
    if touch.is_absolute() or ".." in touch.parts:
        parser.error("--touch must be a path inside the workspace")
    return args


def run(args: argparse.Namespace) -> BuildDocument:
    started_at = datetime.now(UTC).isoformat()
    clock = time.monotonic()
    workspace = (args.workspace or _default_workspace()).resolve()
    if not (workspace / "WORKSPACE").is_file():
        raise OSError(f"{workspace} is not a Bazel workspace (no WORKSPACE file)")
    machine = collect_machine(libraries=())
    extra = [f"--jobs={args.jobs}"] if args.jobs is not None else []
    extra += args.bazel_arg
    tmp = Path(tempfile.mkdtemp(prefix="ssot-bench-build-"))
    copy, output_base, logs = tmp / "workspace", tmp / "output_base", tmp / "logs"
    logs.mkdir()
    phases: list[PhaseResult] = []
    bazel: _Bazel | None = None
    try:
        _say(f"copying {workspace} to {copy}")
        files = copy_workspace(workspace, copy)
        touched = copy / args.touch
        if not touched.is_file():
            raise OSError(f"--touch {args.touch} is not a file of the workspace")
        bazel = _Bazel(args.bazel or copy / "tools" / "bazel", copy, output_base, logs)
        phases.append(bazel.test("cold", args.targets, extra, args.timeout))
        phases.append(bazel.test("cached", args.targets, extra, args.timeout))
        append_touch_comment(touched)
        phases.append(bazel.test("touched", args.targets, extra, args.timeout))
    finally:
        if bazel is not None:
            bazel.shutdown()
        if args.keep:
            _say(f"kept {tmp}")
        else:
            remove_tree(tmp)
    version_file = workspace / ".bazelversion"
    document = BuildDocument(
        started_at=started_at,
        duration_seconds=time.monotonic() - clock,
        machine=machine,
        load_average_end=load_average(),
        parameters=BuildParameters(
            targets=tuple(args.targets),
            jobs=args.jobs,
            touch=args.touch,
            bazel_args=tuple(args.bazel_arg),
            bazel_version=version_file.read_text().strip() if version_file.is_file() else None,
            files_copied=files,
        ),
        phases=phases,
        notes=[
            "A private copy with its own output base; the invoking workspace's cache is "
            "untouched. Bazel's repository cache (downloads) is shared per user.",
            "cold includes fetching external repositories (pip install of the locked wheels).",
        ],
    )
    if not args.no_chart:
        path = (args.chart or _default_chart_path()).resolve()
        load = ", ".join(f"{value:.2f}" for value in machine.load_average_start)
        subtitle = (
            f"{' '.join(args.targets)}; {machine.usable_cores} cores, load average at start {load}"
        )
        draw_build_chart(path, {p.phase: p.wall_seconds for p in phases}, subtitle)
        document = document.model_copy(update={"chart": str(path)})
    return document


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        document = run(args)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"build: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(document.model_dump_json(indent=2))
    if document.chart:
        _say(f"chart written to {document.chart}")
    return 0 if all(phase.exit_code == 0 for phase in document.phases) else 3


if __name__ == "__main__":
    sys.exit(main())
