"""Progress bars on stderr for work that lasts more than a moment; silent for --json and without a terminal
(where long searches print a line a minute instead)."""

import contextlib
import sys
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

# A bar appears once work has lasted this long, whatever its size: a small model whose layers each take
# GPTQ seconds needs one as much as a large one being copied.
SHOW_AFTER_SECONDS = 2.0


class _LateBar:
    """A transient rich bar on stderr that appears only after SHOW_AFTER_SECONDS (from a timer thread, so
    that one slow step shows it too), and only on a terminal: redirected output gets nothing."""

    def __init__(self, columns, description, total, **fields):
        self.columns, self.description, self.total, self.fields = columns, description, total, fields
        self.completed, self.bar, self.task = 0, None, None
        self.lock = threading.Lock()
        self.timer = None
        if Console(stderr=True).is_terminal:
            self.timer = threading.Timer(SHOW_AFTER_SECONDS, self._show)
            self.timer.daemon = True
            self.timer.start()

    def _show(self):
        with self.lock:
            if self.timer is None:  # already closed
                return
            self.bar = Progress(*self.columns, console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(self.description, total=self.total, completed=self.completed,
                                          **self.fields)
            self.bar.start()

    def update(self, advance=0, **fields):
        with self.lock:
            self.completed += advance
            self.fields.update(fields)
            if self.bar is not None:
                self.bar.update(self.task, advance=advance, **fields)

    def close(self):
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.bar is not None:
                self.bar.stop()
                self.bar = None


@contextlib.contextmanager
def _late_bar(columns, description, total, **fields):
    bar = _LateBar(columns, description, total, **fields)
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def tensor_progress(tensors, label, enabled=True):
    """Yields advance(info): call it once per tensor handled; advance.starting(info) before a tensor's
    work names it on the bar (where a slow step spends its time)."""
    if not enabled:
        advance = lambda info: None  # noqa: E731
        advance.starting = lambda info: None
        yield advance
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[tensor]}"))
    with _late_bar(columns, label, sum(t.nbytes for t in tensors), tensor="") as bar:
        def advance(info):
            bar.update(advance=info.nbytes)

        advance.starting = lambda info: bar.update(tensor=_short(getattr(info, "layer", "") or info.name))
        yield advance


def _short(name, width=40):
    return name if len(name) <= width else "…" + name[-(width - 1):]


@contextlib.contextmanager
def batch_progress(total, enabled=True, label="predicting", unit="examples"):
    """Yields advance(n): call it after each batch of n examples (or other `unit`s)."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn(label), BarColumn(), TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),
               TimeRemainingColumn())
    with _late_bar(columns, label, total) as bar:
        yield lambda n: bar.update(advance=n)


LINE_EVERY_SECONDS = 60  # without a terminal: one progress line at least this often


@contextlib.contextmanager
def evaluation_progress(total, label, enabled=True, deadline=None):
    """One bar over a run's evaluations. Yields advance(note): call it after each, with e.g. the best so
    far; `total` may grow (advance.total = n) when a search learns how many it needs. Without a terminal
    (output redirected to a file), a line every minute instead: evaluations done, the note, time left
    before `deadline` (a time.monotonic() value)."""
    if not enabled or not total:
        advance = lambda note="": None  # noqa: E731
        advance.grow = lambda n: None
        yield advance
        return
    if not sys.stderr.isatty():
        yield _progress_lines(label, deadline)
        return
    columns = (TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
               TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, note="")

        def advance(note=""):
            bar.update(task, advance=1, note=note)

        def grow(n):
            bar.update(task, total=bar.tasks[0].total + n)

        advance.grow = grow
        yield advance


def _progress_lines(label, deadline):
    started = last = time.monotonic()
    done = 0

    def advance(note=""):
        nonlocal done, last
        done += 1
        now = time.monotonic()
        if now - last >= LINE_EVERY_SECONDS:
            last = now
            left = f", {max(0, deadline - now) / 60:.1f} min left" if deadline is not None else ""
            print(f"{label}: {done} evaluations in {(now - started) / 60:.1f} min{left}"
                  + (f"; {note}" if note else ""), file=sys.stderr, flush=True)

    advance.grow = lambda n: None
    return advance
