"""Helpers for source tests: a JobControl that records what a source reported."""

from __future__ import annotations

from jupyter_staging.safety.control import JobControl


class Progress:
    """A JobControl whose reported bytes and log lines the test can read."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lines: list[tuple[str, str]] = []
        self.control = JobControl(on_bytes=self._on_bytes, log=self._log)

    def _on_bytes(self, n: int) -> None:
        self.bytes += n

    def _log(self, level: str, message: str) -> None:
        self.lines.append((level, message))
