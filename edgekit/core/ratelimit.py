"""Log lines that an outsider can trigger (a bad peer per connection), limited so that a flood of them cannot
fill a console or a disk."""
from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most ``per_minute`` lines a minute through ``logger``; the rest are counted and reported in one line
    when the next minute starts."""

    def __init__(self, logger: logging.Logger, per_minute: int = 60):
        self.logger, self.per_minute = logger, per_minute
        self.window, self.count, self.dropped = 0, 0, 0

    def _emit(self, level: int, message: str, *args) -> None:
        window = int(time.monotonic() // 60)
        if window != self.window:
            if self.dropped:
                self.logger.warning("%d more connection messages in the last minute were not logged", self.dropped)
            self.window, self.count, self.dropped = window, 0, 0
        self.count += 1
        if self.count <= self.per_minute:
            self.logger.log(level, message, *args)
        else:
            self.dropped += 1

    def warning(self, message: str, *args) -> None:
        self._emit(logging.WARNING, message, *args)

    def info(self, message: str, *args) -> None:
        self._emit(logging.INFO, message, *args)
