"""Logging set up for where chatd runs: a terminal, the journal, or a log collector.

The journal stamps every line itself, so under systemd (``JOURNAL_STREAM`` names our
stderr) lines carry no time; elsewhere they do. ``json`` writes one object per line for
collectors that parse fields rather than text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, ClassVar

from chatd.systemd import journal_stream

__all__ = ["JournalFormatter", "JsonFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    """No time (the journal stamps each line), and the ``<N>`` prefix of sd-daemon(3)
    so that journald files each line at its priority (``journalctl -p warning`` works).
    """

    PRIORITIES: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        # Every line of a multi-line record (a traceback) keeps the priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send chatd's and the runtime's logs to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif journal_stream():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
