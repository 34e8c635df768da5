"""structlog set-up: JSON lines to var/logs/daemon.log, readable lines on the console.

The level filter is compiled into the bound logger class, so a debug call at INFO costs one
method call that returns at once: nothing is formatted or written per event at the default level.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson
import structlog

from .log_handlers import LineFile, QuietStream


def configure_logging(log_dir: Path, level: str = "INFO", console: bool = False) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "daemon.log"
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    json_formatter = structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.JSONRenderer(
            serializer=lambda obj, **kw: orjson.dumps(obj, default=str).decode()),
        foreign_pre_chain=shared)
    file_handler = LineFile(log_file)  # a full disk drops lines quietly (log_handlers.py)
    file_handler.setFormatter(json_formatter)
    handlers: list[logging.Handler] = [file_handler]
    if console:
        console_handler = QuietStream(sys.stderr)
        console_handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            processor=structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
            foreign_pre_chain=shared))
        handlers.append(console_handler)
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, LineFile):  # configured again (tests): do not leak its fd
            replaced.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True)
    return log_file
