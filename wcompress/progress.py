"""Progress bars on stderr for long work; silent for small models and for --json."""

import contextlib
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

# Below this many bytes a run is over before a bar would help.
SHOW_ABOVE_BYTES = 64 * 2**20


@contextlib.contextmanager
def tensor_progress(tensors, label, enabled=True):
    """Yields advance(info): call it once per tensor handled."""
    total = sum(t.nbytes for t in tensors)
    if not enabled or total < SHOW_ABOVE_BYTES:
        yield lambda info: None
        return
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[tensor]}"))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total, tensor="")
        yield lambda info: bar.update(task, advance=info.nbytes, tensor=info.name[-40:])


@contextlib.contextmanager
def batch_progress(total, enabled=True):
    """Yields advance(n): call it after each batch of n examples."""
    if not enabled or total < 2048:
        yield lambda n: None
        return
    columns = (TextColumn("predicting"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("predicting", total=total)
        yield lambda n: bar.update(task, advance=n)


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
