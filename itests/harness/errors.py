"""The harness's one error type."""

from __future__ import annotations


class HarnessError(RuntimeError):
    """A test server could not be found, started, reached or stopped.

    The message says which binary or directory was involved and, when a server process
    failed, ends with the tail of its log, so a failing fixture explains itself.
    """
