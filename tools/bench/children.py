"""Servers of a benchmark as child processes on loopback.

A child is ``python -m MODULE ARGS`` with this interpreter and this import path (so it
works the same under ``bazel run`` runfiles and in a plain checkout). It prints one line
``LISTENING ...`` on stdout once it serves; :meth:`ChildServer.start` waits for that line
(bounded) and returns what follows it. Its stderr (log lines) goes to a file, shown when
it fails. :meth:`ChildServer.stop` sends SIGTERM and waits, then kills.

Separate processes keep the server's memory (measured per connection) apart from the
clients', and let the server use a core of its own.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ChildServer", "child_environment"]

_CLEAN_VARIABLES = ("RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "PYTHONSAFEPATH")


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with its import path as ``PYTHONPATH`` and ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in _CLEAN_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ChildServer:
    """``python -m module args`` that announces itself with ``LISTENING <rest>``."""

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.module = module
        self._args = list(args)
        self._log_path = log_path
        self._env = child_environment(env)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        #: What followed ``LISTENING`` on the announcement line.
        self.listening = ""

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.module} is not started")
        return self._process.pid

    def start(self) -> Self:
        with self._log_path.open("w") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self._args],
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self._env,
            )
        stdout = self._process.stdout
        assert stdout is not None  # stdout=PIPE
        deadline = time.monotonic() + self._startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError(
                    f"{self.module} did not start within {self._startup_timeout}s:\n{self.log()}"
                )
            ready, _, _ = select.select([stdout], [], [], min(remaining, 1.0))
            if not ready:
                continue
            line = stdout.readline()
            if not line:
                code = self._process.wait(10)
                raise RuntimeError(f"{self.module} exited ({code}) before listening:\n{self.log()}")
            if line.startswith("LISTENING "):
                self.listening = line.removeprefix("LISTENING ").strip()
                return self

    def log(self, limit: int = 4000) -> str:
        """The tail of the child's stderr."""
        try:
            return self._log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
