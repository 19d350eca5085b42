"""Process plumbing shared by the PostgreSQL and Redis test servers.

It picks ephemeral loopback ports, makes the temporary directory a server lives in,
runs servers that refuse root as an unprivileged account, and owns the child
processes: a child is stopped with its server's shutdown signal, killed if it does not
exit in time, killed at interpreter exit if a test forgot it, and (when started from the
main thread on Linux) killed by the kernel if the test process itself dies.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from itests.harness.errors import HarnessError

log = structlog.get_logger(__name__)

LOOPBACK = "127.0.0.1"

#: The account a server runs as when the tests run as root; override with this variable.
RUN_AS_ENV = "SSOT_TEST_SERVER_USER"
_DEFAULT_RUN_AS = "nobody"

_PR_SET_PDEATHSIG = 1


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago.

    The socket is closed before the port is handed to a server, so another process may
    take it in between: callers retry with a new port when the server cannot bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a server runs as when the tests run as root.

    PostgreSQL refuses to run as root. Rather than switching to another account (which
    would need the server's files handed over to it, and fails inside Bazel's
    linux-sandbox: that sandbox is a user namespace that maps no account but root, so a
    setuid to ``nobody`` is refused with EINVAL), the server is started by util-linux
    ``unshare`` in a new user namespace in which it *is* this account, mapped onto the
    caller's own uid. It owns the caller's files, so ``TEST_TMPDIR`` works as it is.
    """

    name: str
    uid: int
    gid: int

    @classmethod
    def for_current_process(cls, name: str | None = None) -> RunAs | None:
        """None when not root (servers then run as the current user), else the account.

        The account is ``name``, else ``$SSOT_TEST_SERVER_USER``, else ``nobody``; it must
        exist in the user database, since servers look their own account up.
        """
        if os.geteuid() != 0:
            return None
        wanted = name or os.environ.get(RUN_AS_ENV) or _DEFAULT_RUN_AS
        try:
            entry = pwd.getpwnam(wanted)
        except KeyError:
            raise HarnessError(
                f"running as root, but the account {wanted!r} to run servers as does not "
                f"exist; create it or name another with {RUN_AS_ENV}"
            ) from None
        if entry.pw_uid == 0:
            raise HarnessError(f"the account {wanted!r} to run servers as is root")
        return cls(name=wanted, uid=entry.pw_uid, gid=entry.pw_gid)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as this account in a new user namespace."""
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        return [
            unshare,
            "--user",
            f"--map-user={self.uid}",
            f"--map-group={self.gid}",
            "--",
            *argv,
        ]


def make_base_dir(prefix: str) -> Path:
    """A new private directory for one server, below ``TEST_TMPDIR`` when it is set."""
    parent = Path(os.environ.get("TEST_TMPDIR") or tempfile.gettempdir())
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as error:
        raise HarnessError(f"cannot make a directory in {parent}: {error.strerror}") from error


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a server log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; raise HarnessError after ``timeout`` seconds.

    ``abort`` is checked on every round; a non-None result (a reason) stops the wait at
    once, so a server that died while starting fails fast instead of timing out.
    """
    deadline = time.monotonic() + timeout
    while True:
        if abort is not None:
            reason = abort()
            if reason is not None:
                raise HarnessError(f"{what}: {reason}")
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise HarnessError(f"{what}: not done after {timeout:.1f}s")
        time.sleep(interval)


def _parent_death_hook() -> Callable[[], None] | None:
    """A preexec function that makes the kernel kill the child when this process dies.

    Only on Linux and only from the main thread: the kernel ties the signal to the thread
    that forked, and a worker thread may end while the server should live on.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        # Runs in the child before exec; kills itself if the parent is already gone.
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


class ServerProcess:
    """One child server process with its log file; stopped or killed, never leaked."""

    _live: set[ServerProcess] = set()  # noqa: RUF012 -- the registry of running children
    _lock = threading.Lock()

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        run_as: RunAs | None,
        env: Mapping[str, str],
        cwd: Path,
        name: str,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_file: IO[bytes] = log_path.open("ab")
        try:
            self._popen = self._spawn(argv, log_file, run_as, env, cwd)
        except OSError as error:
            raise HarnessError(f"cannot start {name} ({argv[0]}): {error}") from error
        finally:
            log_file.close()
        with self._lock:
            self._live.add(self)
        log.debug("harness.process_started", server=name, pid=self._popen.pid)

    @staticmethod
    def _spawn(
        argv: Sequence[str],
        log_file: IO[bytes],
        run_as: RunAs | None,
        env: Mapping[str, str],
        cwd: Path,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            run_as.wrap(argv) if run_as else list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            preexec_fn=_parent_death_hook(),  # noqa: PLW1509 -- prctl only, no locks
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def exit_code(self) -> int | None:
        """The exit status if the process has ended, else None."""
        return self._popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; kill it after ``timeout`` seconds."""
        try:
            self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("harness.process_killed", server=self.name, pid=self.pid)
            self._popen.kill()
            self._popen.wait()
        with self._lock:
            self._live.discard(self)
        return self._popen.returncode

    def stop(self, sig: signal.Signals, timeout: float) -> int:
        """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL; returns the status."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)
        return self.wait(timeout)

    @classmethod
    def kill_all(cls) -> None:
        """Kill every child still running (registered with atexit)."""
        with cls._lock:
            leftovers = list(cls._live)
        for process in leftovers:
            process.stop(signal.SIGKILL, timeout=5.0)


atexit.register(ServerProcess.kill_all)
