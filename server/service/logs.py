"""Triton's logging extension: what the server logs (levels, verbosity, format, file), set at start from
the command line and changed at run time through `/v2/logging` or gRPC `LogSettings`."""

import json
import logging
import sys
import time

from server.core.errors import InvalidArgument
from server.core.fields import boolean, integer

FORMATS = ("default", "ISO8601", "json")
_BOOLEANS = ("log_info", "log_warning", "log_error")


class LogService:
    def __init__(self, verbose_level: int = 0, log_format: str = "default"):
        self.settings = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                         "log_verbose_level": verbose_level, "log_format": log_format}
        self.handler = logging.StreamHandler()
        self.handler.addFilter(self._wanted)

    def install(self) -> None:
        """Makes this service's handler the root logger's one."""
        logging.getLogger().handlers[:] = [self.handler]
        self._apply()

    def get(self) -> dict:
        return dict(self.settings)

    def update(self, changes: dict) -> dict:
        settings = dict(self.settings)
        for key, value in changes.items():
            settings[key] = _checked(key, value)
        if settings["log_file"] != self.settings["log_file"]:
            self._open(settings["log_file"])
        self.settings = settings
        self._apply()
        return self.get()

    def _open(self, path: str) -> None:
        try:
            stream = open(path, "a", encoding="utf-8") if path else sys.stderr  # the handler keeps it
        except OSError as error:
            raise InvalidArgument(f"cannot open log_file '{path}': {error.strerror}") from None
        previous = self.handler.setStream(stream)
        if previous not in (None, sys.stderr, sys.stdout):
            previous.close()

    def _apply(self) -> None:
        verbose = self.settings["log_verbose_level"]
        logging.getLogger().setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        for name in ("server", "ortserve"):
            logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 1 else logging.NOTSET)
        self.handler.setFormatter(formatter(self.settings["log_format"]))

    def _wanted(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return self.settings["log_error"]
        if record.levelno >= logging.WARNING:
            return self.settings["log_warning"]
        if record.levelno >= logging.INFO:
            return self.settings["log_info"]
        return self.settings["log_verbose_level"] > 0


def _checked(key: str, value):
    what = f"log setting '{key}'"
    if value is None:
        raise InvalidArgument(f"{what} needs a value")
    if key in _BOOLEANS:
        return boolean(value, what)
    if key == "log_verbose_level":
        return integer(value, what)
    if key == "log_format":
        if value not in FORMATS:
            raise InvalidArgument(f"{what} must be one of {', '.join(FORMATS)}, got {value!r}")
        return value
    if key == "log_file":
        if not isinstance(value, str):
            raise InvalidArgument(f"{what} must be a path (a string), got {value!r}")
        return value
    raise InvalidArgument(f"unknown log setting '{key}'; the settings are log_file, {', '.join(_BOOLEANS)}, "
                          "log_verbose_level, log_format")


def formatter(log_format: str) -> logging.Formatter:
    """default: local time; ISO8601 (Triton's name): UTC in ISO 8601; json: one object per line."""
    if log_format == "json":
        return _JsonFormatter()
    if log_format == "ISO8601":
        iso = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        iso.converter = time.gmtime
        return iso
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.name == "ortserve.access":  # already JSON: its fields, not a string of them
            entry["access"] = json.loads(entry.pop("message"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)

    converter = time.gmtime
