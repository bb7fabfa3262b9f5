"""A live console line for the step `mathforge evolve` is running, while its output goes to step.log.

The line says which step of the plan runs, the step's own progress read from the newest progress bar in
its log (tqdm's ``n/total [elapsed<left`` of the search, the evaluation, the trainers), the time since
the step started and the bar's estimate of what is left (for a count without a bar, e.g. the tiny
model's "pretrain step 300/1200", the step's pace so far). On a terminal it is rewritten in place every
second; elsewhere (a pipe, a file) it is printed as a new line every minute.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

# tqdm's "desc: 42%|████  | 120/640 [01:23<02:10, 1.5problem/s]"; desc and the bar are optional
BAR = re.compile(
    r"(?:(?P<desc>[^\r\n|:]{1,40}):\s*)?(?:\d+%\|[^|\r\n]*\|\s*)?(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+)"
)
# a stage's own count, e.g. "pretrain step 300/1200: copy loss 0.41"
COUNT = re.compile(r"(?P<desc>[A-Za-z][\w ]{0,30}?) step (?P<n>\d+)/(?P<total>\d+)")
TAIL_BYTES = 8192


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def read_progress(log: Path) -> dict | None:
    """The newest progress bar in the end of ``log``: desc, n, total, left (tqdm's estimate), or None."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    matches = list(BAR.finditer(tail)) + list(COUNT.finditer(tail))
    if not matches:
        return None
    m = max(matches, key=lambda m: m.end())
    left = m.groupdict().get("left")
    return {
        "desc": (m["desc"] or "").strip() or None,
        "n": int(m["n"]),
        "total": int(m["total"]),
        "left": None if not left or "?" in left else left,
    }


def status_line(prefix: str, elapsed: float, progress: dict | None, counted_at: float | None = None) -> str:
    """``prefix | desc n/total | elapsed m:ss, ~m:ss left``. Without the bar's own estimate, what is left
    comes from the pace up to ``counted_at``, the elapsed time when the count first showed its value."""
    parts = [prefix]
    if progress is not None:
        desc = f"{progress['desc']} " if progress["desc"] else ""
        parts.append(f"{desc}{progress['n']}/{progress['total']}")
    timing = f"{_clock(elapsed)} elapsed"
    if progress is not None and progress["left"]:
        timing += f", ~{progress['left']} left"
    elif progress is not None and 0 < progress["n"] <= progress["total"]:  # no bar: the step's own pace
        at = elapsed if counted_at is None else counted_at
        left = at * (progress["total"] - progress["n"]) / progress["n"] - (elapsed - at)
        timing += f", ~{_clock(max(0.0, left))} left"
    parts.append(timing)
    return " | ".join(parts)


class LiveLine:
    """While a step runs (a ``with`` block), show its status on ``console`` from a background thread.

    ``console`` is a file descriptor of the terminal taken before the step redirects this process's
    stdout into its log (a stage that runs in-process writes to fd 1 then)."""

    def __init__(self, console_fd: int, prefix: str, log: Path, every: float | None = None):
        self.fd = console_fd
        self.tty = os.isatty(console_fd)
        self.prefix, self.log = prefix, log
        self.every = every if every is not None else (1.0 if self.tty else 60.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._width = 0
        self._count: tuple[int, float] | None = None  # the count shown and when it first showed

    def _write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode())
        except OSError:
            self._stop.set()  # the console went away: stop showing, the step goes on

    def show(self) -> None:
        elapsed = time.perf_counter() - self.started
        progress = read_progress(self.log)
        if progress is not None and (self._count is None or self._count[0] != progress["n"]):
            self._count = (progress["n"], elapsed)
        line = status_line(self.prefix, elapsed, progress, self._count[1] if self._count else None)
        if self.tty:
            self._write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._write(line + "\n")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.show()

    def __enter__(self) -> LiveLine:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.tty and self._width:
            self._write("\r" + " " * self._width + "\r")  # the finished line replaces it


__all__ = ["LiveLine", "read_progress", "status_line"]
