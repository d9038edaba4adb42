"""esptool's console output, routed into the log while otaship calls its code.

esptool (and espsecure) print through one process-wide logger that writes to
stdout; the receiver and the action call their functions, and neither may
print what those functions say.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from esptool.logger import EspLog, TemplateLogger, log

logger = logging.getLogger("otaship.firmware.image")


class _EsptoolLogCapture(TemplateLogger):  # type: ignore[misc]  # esptool ships no types
    """Routes esptool's console output into this module's logger."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        logger.debug("esptool: %s", " ".join(str(arg) for arg in args))

    def note(self, message: str) -> None:
        logger.debug("esptool: %s", message)

    def warning(self, message: str) -> None:
        logger.warning("esptool: %s", message)

    def error(self, message: str) -> None:
        logger.error("esptool: %s", message)

    def stage(self, finish: bool = False) -> None:
        pass

    def progress_bar(
        self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "", bar_length: int = 30
    ) -> None:
        pass

    def set_verbosity(self, verbosity: str) -> None:
        pass


_esptool_log_lock = threading.Lock()


@contextmanager
def quiet_esptool() -> Iterator[None]:
    # The lock keeps concurrent calls from restoring the singleton out of order.
    with _esptool_log_lock:
        previous = EspLog.instance
        log.set_logger(_EsptoolLogCapture())
        try:
            yield
        finally:
            EspLog.instance = previous
