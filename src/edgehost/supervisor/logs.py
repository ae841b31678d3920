"""One place for every line: prefixed by service, to stdout and to rotating per-service files."""

from __future__ import annotations

import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Iterable, TextIO
import logging


class _FileHandler(RotatingFileHandler):
    """A rotating file that reports a failing disk once, instead of a traceback per line."""

    def __init__(self, *args, on_error, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_error = on_error
        self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        self._errored = True
        if not self.failing:
            self.failing = True
            self.on_error(f"cannot write {self.baseFilename} (disk full?); lines go to stdout only until it works again")

    def emit(self, record: logging.LogRecord) -> None:
        self._errored = False
        super().emit(record)
        if self.failing and not self._errored:
            self.failing = False
            self.on_error(f"writing {self.baseFilename} again")


class LogHub:
    """Writes `[service] line` to stdout and each service's file; secrets are masked on the way."""

    def __init__(self, log_dir: Path, secrets: Iterable[str] = (), stream: TextIO | None = None,
                 max_bytes: int = 10 * 1024 * 1024, backups: int = 5):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stream = stream or sys.stdout
        self.max_bytes = max_bytes
        self.backups = backups
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._files: dict[str, RotatingFileHandler] = {}
        self._lock = threading.Lock()
        self._fmt = logging.Formatter("%(asctime)s %(message)s")

    def _handler(self, name: str) -> RotatingFileHandler:
        handler = self._files.get(name)
        if handler is None:
            handler = _FileHandler(self.log_dir / f"{name}.log", maxBytes=self.max_bytes, backupCount=self.backups,
                                   encoding="utf-8", delay=True, on_error=self._stdout_only)
            handler.setFormatter(self._fmt)
            self._files[name] = handler
        return handler

    def _stdout_only(self, text: str) -> None:
        try:
            self.stream.write(f"[edgehost] {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def mask(self, line: str) -> str:
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, "***")
        return line

    def line(self, name: str, text: str) -> None:
        text = self.mask(text.rstrip("\n"))
        record = logging.LogRecord(name, logging.INFO, "", 0, text, None, None)
        with self._lock:
            try:
                self.stream.write(f"[{name}] {text}\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (launchd closed it): the files still get the line
            try:
                self._handler(name).emit(record)
            except OSError:
                pass

    def reopen(self) -> None:
        """Close and reopen every file (SIGHUP from newsyslog after it moved them)."""
        with self._lock:
            for handler in self._files.values():
                handler.acquire()
                try:
                    if handler.stream:
                        handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()

    def close(self) -> None:
        with self._lock:
            for handler in self._files.values():
                handler.close()
            self._files.clear()
