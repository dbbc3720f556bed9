"""Logging setup: readable text by default, one JSON object a line with ``--log-format json``."""

from __future__ import annotations

import logging
import time

import msgspec

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Each record as JSON: time, level, logger, message, and whatever ``extra`` fields it carries
    (a struct's fields inline), encoded by msgspec."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD:
                continue
            if isinstance(value, msgspec.Struct):  # a finished response's record: its fields inline
                entry.update(msgspec.structs.asdict(value))
            else:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry).decode()


_ENCODER = msgspec.json.Encoder(enc_hook=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs each request it makes, URL and all, at INFO: an MCP server URL may carry a token,
    # and a line per upstream or tool call is noise. Its warnings still come through.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
