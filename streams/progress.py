"""A small progress bar for long work, drawn on stderr only when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Progress over a known total (bytes, events, seconds of simulated time).

    Silent unless ``enabled`` (default: stderr is a TTY), redraws at most 10 times a second.
    """

    def __init__(self, total: float, label: str, *, unit: str = "",
                 enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(float(total), 1e-9)
        self.label = label
        self.unit = unit
        self.done = 0.0
        self.started = time.monotonic()
        self._last_draw = 0.0

    def update(self, done: float, extra: str = "") -> None:
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and done < self.total:
            return
        self._last_draw = now
        frac = min(1.0, done / self.total)
        width = 30
        filled = int(frac * width)
        elapsed = now - self.started
        eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
            f"{extra} eta {eta:5.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.total)
            self.stream.write("\n")
            self.stream.flush()
