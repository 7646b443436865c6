"""JSON-lines logging for every service, with the service name and request id on each line.

Owns: the root logger's configuration in a service process.
Trusts: nothing logged is assumed safe: values of keys that name secrets are masked.
Never: writes a secret (token, password, key, cookie) to a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from grainhouse_common import requestid

_SECRET_WORDS = ("token", "password", "secret", "cookie", "authorization", "key")
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _mask(key: str, value: Any) -> Any:
    if any(word in key.lower() for word in _SECRET_WORDS):
        return "***"
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, request_id, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = requestid.get()
        if rid:
            line["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                line[key] = _mask(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(service: str, level: str = "info") -> logging.Logger:
    """Send every log record of this process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("grpc", "nats", "psycopg", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "debug" else "WARNING")
    return logging.getLogger(service)
