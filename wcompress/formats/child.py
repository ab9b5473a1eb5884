"""Child processes that read untrusted files for us, and that cannot outlive the command.

A damaged file can crash a C library (HDF5, TensorFlow Lite) or make it spin forever inside C code,
where no Python signal handler runs. So such a first read happens in a child process that:
- dies with its parent: PR_SET_PDEATHSIG(SIGKILL), even when the parent is SIGKILLed;
- runs in its own process group, which the parent kills on every way out of `run` (an exception,
  Ctrl-C, the SIGTERM/SIGHUP handlers that unwind like Ctrl-C);
- is stopped by its CPU time (RLIMIT_CPU), not the wall clock: a sound file costs milliseconds of CPU
  however loaded the machine is, while a spin burns its limit in seconds. A generous wall-clock limit
  remains only for a child that blocks without spinning.

The child's result is one JSON value, returned by a function importable by module and name.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import types
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
_MARK = "@@wcompress-child "


@dataclass
class ChildOutcome:
    value: object = None  # what the function returned, when it returned
    signal: str = None  # the signal that ended the child (SIGSEGV, SIGABRT...), when one did
    cpu_exceeded: bool = False
    wall_exceeded: bool = False
    exit_code: int = 0

    @property
    def ok(self):
        return self.signal is None and not self.cpu_exceeded and not self.wall_exceeded and self.exit_code == 0


def _die_with_parent(parent):
    """In the child: be killed when the parent dies; exit at once if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (AttributeError, OSError):  # not Linux: the process-group kill on every exit path remains
        pass
    if os.getppid() != parent:
        os._exit(70)


def _limit_cpu(seconds):
    seconds = int(max(1, seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))  # soft: SIGXCPU, hard: SIGKILL


def can_fork():
    """A fork copies this process in milliseconds, but is only safe while no other thread may hold a lock
    the child needs (TensorFlow starts thread pools): otherwise a new interpreter runs the function."""
    from wcompress.formats.tfenv import loaded

    return hasattr(os, "fork") and threading.active_count() == 1 and not loaded()


def run(function, args, cpu_seconds, wall_seconds=600, fork=None, env=None, quiet=True):
    """Run `function(*args)` in a guarded child; its JSON-able return value comes back in the outcome. A new
    interpreter's stderr (its progress bars) is shown when not `quiet`; a fork's never is."""
    fork = can_fork() if fork is None else fork
    return _run_forked(function, args, cpu_seconds, wall_seconds) if fork else \
        _run_interpreter(function, args, cpu_seconds, wall_seconds, env, quiet)


def _run_forked(function, args, cpu_seconds, wall_seconds):
    parent = os.getpid()
    reading, writing = os.pipe()  # the child's end closes when it exits, however it exits
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code, never flushes the parent's buffers
        code = 0
        try:
            os.close(reading)
            os.setpgid(0, 0)
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(number, signal.SIG_DFL)  # the parent's handlers only set a flag C code never reads
            _die_with_parent(parent)
            _limit_cpu(cpu_seconds)
            import faulthandler

            faulthandler.disable()  # a crash here is the expected outcome of a damaged file, not news
            with open(os.devnull, "w") as quiet:
                os.dup2(quiet.fileno(), 1)
                os.dup2(quiet.fileno(), 2)
            value = function(*args)
            os.write(writing, json.dumps(value).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(writing)
    try:
        os.setpgid(pid, pid)  # also here, so the group exists before any kill below
    except OSError:
        pass  # the child already did it, or already exited
    try:
        data, waited = _read_until_closed(reading, wall_seconds)
    except BaseException:
        _kill_group(pid)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(reading)
    if not waited:
        _kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    return _outcome(status, usage, cpu_seconds, not waited, data)


def _read_until_closed(fd, wall_seconds):
    chunks, remaining = [], wall_seconds
    import time

    deadline = time.monotonic() + wall_seconds
    while remaining > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
        remaining = deadline - time.monotonic()
    return b"".join(chunks), False


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_SCRIPT = """
import json, os, sys
from wcompress.formats import child
child._die_with_parent(int(sys.argv[1]))
child._limit_cpu(float(sys.argv[2]))
module, name, args = sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
import importlib
value = getattr(importlib.import_module(module), name)(*args)
sys.stdout.write(child._MARK + json.dumps(value) + "\\n")
"""


def _run_interpreter(function, args, cpu_seconds, wall_seconds, env, quiet=True):
    argv = [sys.executable, "-c", _SCRIPT, str(os.getpid()), str(cpu_seconds), function.__module__,
            function.__qualname__, json.dumps(list(args))]
    environment = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    # The interpreter must import this package whether it was installed or is run from a checkout.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environment["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [environment.get("PYTHONPATH")] if p])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None,
                            stdin=subprocess.DEVNULL, env=environment, start_new_session=True)
    try:
        data, waited = _read_until_closed(proc.stdout.fileno(), wall_seconds)
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if not waited:
        _kill_group(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here: keep Popen from waiting on it again
    lines = [line for line in data.decode(errors="replace").splitlines() if line.startswith(_MARK)]
    return _outcome(status, usage, cpu_seconds, not waited, lines[-1][len(_MARK):].encode() if lines else b"")


def _outcome(status, usage, cpu_seconds, wall_exceeded, data):
    outcome = ChildOutcome(wall_exceeded=wall_exceeded)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        used = usage.ru_utime + usage.ru_stime
        if number == signal.SIGXCPU or (number == signal.SIGKILL and used >= int(max(1, cpu_seconds))):
            outcome.cpu_exceeded = True
        elif not wall_exceeded:
            outcome.signal = signal.Signals(number).name
    else:
        outcome.exit_code = os.WEXITSTATUS(status)
        if outcome.exit_code == 0 and data:
            try:
                outcome.value = json.loads(data)
            except ValueError:
                outcome.exit_code = 1
    return outcome


@contextlib.contextmanager
def _main_script_hidden():
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class WorkerPool:
    """A spawned process pool whose workers die with this process (even SIGKILLed) and are killed, not
    waited for, when the `with` block ends by an error, Ctrl-C or SIGTERM (a worker may be minutes into
    running a model)."""

    def __init__(self, workers):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
        self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_die_with_parent,
                                            initargs=(os.getpid(),))
        # Spawned workers re-run the caller's main script unless told otherwise: a plain script without an
        # `if __name__ == "__main__":` guard would run again in every worker (and start its own pool).
        # What the workers run lives in our modules, so they start with an empty __main__: every worker is
        # started here, while the script is hidden (the executor would otherwise start them one per task,
        # later; the flag is the one a fork executor uses to start them all on the first task).
        if hasattr(self.executor, "_safe_to_dynamically_spawn_children"):
            self.executor._safe_to_dynamically_spawn_children = False
        with _main_script_hidden():
            for started in [self.executor.submit(int) for _ in range(workers)]:
                started.result()

    def __enter__(self):
        return self.executor

    def __exit__(self, kind, error, trace):
        if kind is not None:
            for process in list((getattr(self.executor, "_processes", None) or {}).values()):
                process.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)
