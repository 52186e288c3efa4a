"""Logging set-up for the main process: human text, or one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonLineFormatter(logging.Formatter):
    def __init__(self, source: str | None = None) -> None:
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self.source:
            line["worker"] = self.source
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(level: str, log_format: str, source: str | None = None) -> None:
    """Log to stderr as text, or to stdout as JSON lines; `source` names a worker in every line."""
    handler = logging.StreamHandler(sys.stdout if log_format == "json" else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter(source))
    else:
        where = f" [{source}]" if source else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
