"""Logging for the command-line stages: a console a person can read, and a file that keeps the rest.

    setup_logging("runs/main/logs/pretrain.log")

The console (stderr) shows this project's own messages at INFO and above, bare, and anything else at
ERROR and above; the file gets every record of every logger (Ray, Ray Data, DeepSpeed, warnings) at
DEBUG. Progress bars are drawn only where stderr is a terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import deque
from pathlib import Path

OWN_LOGGERS = ("pipelines", "models", "tune")
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "DeepSpeed", "transformers")
"""Loggers whose own console handlers are taken off: their records go to our file, and to the console at ERROR."""
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


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


class _EarlyRecords(logging.Handler):
    """Keeps the latest records until a log file is known (a command's output folder is claimed only after
    its inputs are checked and Ray has started); the file then gets them first."""

    def __init__(self, capacity: int = 10_000) -> None:
        super().__init__()
        self.records: deque[logging.LogRecord] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(log_file: str | os.PathLike | None = None) -> None:
    """Console and file handlers on the root logger; Python warnings become log records. Until a
    `log_file` (a local path) is given, records are kept in memory and written to it when it is.
    Idempotent: a second call replaces the handlers it made."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_ecg_fm", False)]
    early = next((h for h in ours if isinstance(h, _EarlyRecords)), None)
    for handler in ours:
        root.removeHandler(handler)
        if handler is not early:
            handler.close()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter())
    console.setFormatter(_ConsoleFormatter())
    handlers: list[logging.Handler] = [console]
    if log_file is None:
        handlers.append(early or _EarlyRecords())
    else:
        file = file_handler(log_file)
        for record in early.records if early is not None else ():
            file.handle(record)
        handlers.append(file)
    for handler in handlers:
        handler._ecg_fm = True
        root.addHandler(handler)
    logging.captureWarnings(True)
    if not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    for name in LIBRARY_LOGGERS:
        if not isinstance(logging.Logger.manager.loggerDict.get(name), logging.Logger):
            _create_without_console(name)  # a library imported later (DeepSpeed, lazily) finds it made
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # their own console handlers: records reach ours instead
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


class _WithoutConsoleOfItsOwn(logging.Logger):
    """A library's logger made before the library is imported: the console handler the library adds to it
    (DeepSpeed's `StreamHandler(sys.stdout)`, with `propagate = False`) is dropped and propagation stays on,
    so its records ("Setting accelerator to CPU") reach our handlers: the file, and the console at ERROR."""

    def addHandler(self, handler: logging.Handler) -> None:
        if type(handler) is not logging.StreamHandler:
            super().addHandler(handler)

    @property
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        pass


def _create_without_console(name: str) -> None:
    manager = logging.Logger.manager
    default = manager.loggerClass
    manager.setLoggerClass(_WithoutConsoleOfItsOwn)
    try:
        logging.getLogger(name)
    finally:
        manager.loggerClass = default


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
    _raylet_messages_to_log()
    context = ray.init(address=address, log_to_driver=False, configure_logging=False, **options)
    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    setup_logging(_current_log_file())  # ray.init may have added console handlers of its own
    return context


def _raylet_messages_to_log() -> None:
    """Route what the raylet publishes to drivers through logging (`ray.raylet`): warnings such as "N PYTHON
    worker processes have been started", and notices of a task that will be retried (Serve's controller being
    stopped prints one on every shutdown), reach the log file only; errors (a worker killed, memory running
    low) the console too. Ray prints them to stdout itself, with colour codes and a dedup footer, even without
    log_to_driver, and has no public hook for them: its printer (`ray._private.worker.print_to_stdstream`,
    called by the thread that listens for these messages, and with log_to_driver off by nothing else) is
    replaced."""
    import ray._private.worker as ray_worker

    raylet = logging.getLogger("ray.raylet")

    def log_messages(data: dict, ignore_prefix: bool = False) -> None:
        for message in data.get("lines", []):
            text = ANSI_ESCAPE.sub("", message).strip()
            notice = text.startswith("WARNING") or "so the task will be retried" in text
            raylet.log(logging.WARNING if notice else logging.ERROR, "%s", text)

    ray_worker.print_to_stdstream = log_messages


def _current_log_file() -> str | None:
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_ecg_fm", False) and isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None
