"""Progress of running jobs: live counters and rates over a sliding window."""

from __future__ import annotations

import threading
import time

#: Minimum seconds between two persisted / announced progress updates of one job.
PROGRESS_INTERVAL = 0.25


class RateMeter:
    """Rate (bytes per second) over a sliding window of ``window`` seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: list[tuple[float, int]] = []

    def sample(self, total: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.pop(0)
        t0, b0 = self._samples[0]
        if now - t0 < 0.2:
            return None
        return max(0.0, (total - b0) / (now - t0))


class LiveProgress:
    """Counters a running job updates from its worker thread (bytes, rows) and their rate."""

    def __init__(self, bytes_done: int = 0, rows_done: int = 0) -> None:
        self.bytes_done = bytes_done
        self.rows_done = rows_done
        self.meter = RateMeter()
        self.rate: float | None = None
        self.last_flush = 0.0
        self.lock = threading.Lock()
