"""Logging for the command-line stages: a console a person can read, and a file that keeps the rest.

    setup_logging("runs/main/logs/pretrain.log")

The console (stderr) shows this project's own messages at INFO and above, bare, and anything else at
ERROR and above; the file gets every record of every logger (Ray, Ray Data, DeepSpeed, warnings) at
DEBUG. Progress bars are drawn only where stderr is a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

OWN_LOGGERS = ("pipelines", "models", "tune")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN_LOGGERS  # CLIs name theirs, not "__main__"
        return record.levelno >= (logging.INFO if own else logging.ERROR)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message


def setup_logging(log_file: str | os.PathLike | None = None) -> None:
    """Console and (when `log_file` is given, a local path) file handlers on the root logger; Python
    warnings become log records. Idempotent: a second call replaces the handlers it made."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_ecg_fm", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter())
    console.setFormatter(_ConsoleFormatter())
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        handlers.append(file_handler(log_file))
    for handler in handlers:
        handler._ecg_fm = True
        root.addHandler(handler)
    logging.captureWarnings(True)
    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "DeepSpeed"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # their own console handlers: records reach ours instead
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def file_handler(path: str | os.PathLike) -> logging.FileHandler:
    """A handler appending every record to `path` (its folder created), in the log files' format."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    return handler


def init_ray(address: str | None = None, **options):
    """`ray.init` for a command-line stage: workers' output stays in their logs, Ray logs through ours,
    and Ray Data draws progress bars only on a terminal. A process already connected to Ray (a caller
    that started it, a test session) keeps its connection as it is."""
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        return None
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's own forwarded lines without escape codes
    context = ray.init(address=address, log_to_driver=False, configure_logging=False, **options)
    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    setup_logging(_current_log_file())  # ray.init may have added console handlers of its own
    return context


def _current_log_file() -> str | None:
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_ecg_fm", False) and isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
