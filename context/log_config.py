"""structlog configuration for every process of the platform.

Each composition root (``//server``, ``//auth:server``) calls :func:`configure_logging`
once at start-up. Log lines go to stderr, JSON in production (``console`` for people),
and carry the request context that :func:`context.context_scope` binds (user_id,
thread_id, run_id, request_id) through ``structlog.contextvars``. Libraries that use the
standard ``logging`` module are routed to the same stream at WARNING and above.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

__all__ = ["LogFormat", "configure_logging"]

LogFormat = Literal["json", "console"]


def configure_logging(level: str = "info", *, log_format: LogFormat = "json") -> None:
    """Configure structlog (and stdlib logging) for this process."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Tracebacks never show local variables: a local may hold a token or a password.
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    exceptions: Any = (
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if log_format == "json"
        else structlog.dev.set_exc_info
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), force=True)
