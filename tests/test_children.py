"""No process we start outlives the command, and a file that makes HDF5 spin costs seconds, not minutes.

tests/data holds two files found by flipping bytes of real small files: a container (one changed byte
in an object header) and a `.weights.h5` (4 KB zeroed) on which libhdf5 loops forever while reading the
structure. The structure walk runs in a guarded child (wcompress/formats/child.py)."""

import os
import signal
import subprocess
import sys
import time

import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SPINNING = [os.path.join(DATA, "spinning-container.h5"), os.path.join(DATA, "spinning.weights.h5")]
COMMAND = "import sys; from wcompress.cli import main; sys.argv[0] = 'wcompress'; main()"
# The same walk in a new interpreter, as when TensorFlow's threads make a fork unsafe.
NO_FORK = ("import sys; from wcompress.formats import child, h5check; child.can_fork = lambda: False; "
           "h5check.check_structure(sys.argv[1])")


def _start(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _children(pid):
    """Pids whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _group_members(group):
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _running(int(entry)):
            try:
                if os.getpgid(int(entry)) == group:
                    members.append(int(entry))
            except ProcessLookupError:
                pass
    return members


def _running(pid):
    """Whether `pid` exists and is not a zombie (a dead process its new parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_walker(proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        walkers = _children(proc.pid)
        if walkers:
            time.sleep(0.5)  # let it get into libhdf5's loop
            alive = [pid for pid in walkers if _running(pid)]  # not a short-lived helper (a fork before exec…)
            if alive:
                return alive[0]
        time.sleep(0.05)
    raise AssertionError("no structure walker started")


def _gone(pid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def loaded_machine():
    """Both cores kept busy while the test runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for burner in burners:
        burner.kill()
        burner.wait()


@pytest.mark.parametrize("path", SPINNING, ids=os.path.basename)
def test_a_spinning_file_is_one_line_in_seconds_on_a_loaded_machine(path, loaded_machine):
    started = time.time()
    proc = _start(COMMAND, "profile", path)
    out, err = proc.communicate(timeout=60)
    elapsed = time.time() - started
    assert proc.returncode == 2
    assert err.strip() == (f"wcompress: error: {path}: damaged HDF5 file: reading its structure did not finish "
                           "within 3 s of CPU time")
    assert elapsed < 10, elapsed


@pytest.mark.parametrize("code", [COMMAND, NO_FORK], ids=["forked", "new-interpreter"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT], ids=lambda s: s.name)
def test_ending_the_command_during_the_walk_leaves_no_process(code, stop):
    args = ["profile", SPINNING[0]] if code == COMMAND else [SPINNING[0]]
    proc = _start(code, *args)
    walker = _wait_for_walker(proc)
    group = os.getpgid(walker)
    assert group != os.getpgid(proc.pid)  # the walker has a process group of its own, killed as a whole
    proc.send_signal(stop)
    proc.communicate(timeout=30)
    assert _gone(walker), f"walker {walker} still running after the command got {stop.name}"
    assert _group_members(group) == []


def test_the_new_interpreter_walk_reports_the_spin_too():
    proc = _start(NO_FORK, SPINNING[1])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "did not finish within 3 s of CPU time" in err


def _descendants(pid):
    found, frontier = [], [pid]
    while frontier:
        children = _children(frontier.pop())
        found += children
        frontier += children
    return found


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_sweep_workers_end_with_the_command(tiny, tmp_path, stop):
    import numpy as np

    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.RandomState(0).rand(400_000, 12).astype("float32"))  # seconds per variant
    proc = _start(COMMAND, "sweep", tiny["keras"], "--data", data, "--methods", "relative", "--deltas",
                  "0:0.9:0.01", "--jobs", "2")
    try:
        deadline = time.time() + 90
        while len(_workers(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        started = _descendants(proc.pid)
        assert len(_workers(proc.pid)) == 2
        proc.send_signal(stop)
        proc.communicate(timeout=60)
        assert [pid for pid in started if not _gone(pid, timeout=20)] == []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the test found, it leaves nothing running either
        except ProcessLookupError:
            pass


def _workers(pid):
    """The pool's worker processes among `pid`'s children."""
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read():
                    found.append(child)
        except OSError:
            pass
    return found


# TensorFlow loaded first, as in a long-running process (the fuzzer's worker, a notebook): the walk then
# runs in a new interpreter, and this process must never list the damaged file's links itself.
WITH_TENSORFLOW = ("import sys; from wcompress.formats.tfenv import load; load(); from wcompress.cli import main; "
                   "sys.argv[0] = 'wcompress'; main()")


@pytest.mark.parametrize("code", [COMMAND, WITH_TENSORFLOW], ids=["fresh", "tensorflow-loaded"])
@pytest.mark.parametrize("command", ["restore", "report", "profile"])
def test_a_container_that_crashed_libhdf5_is_one_line(code, command, tmp_path):
    """A fuzz case: a gzip-filter container of a TF1 checkpoint, one byte flipped, whose link listing
    aborted the process ("free(): invalid pointer") once TensorFlow was loaded."""
    damaged = os.path.join(DATA, "crashing-gzip-container.h5")
    args = [command, damaged] + (["-o", str(tmp_path / "out") + "/"] if command == "restore" else [])
    proc = _start(code, *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.startswith(f"wcompress: error: {damaged}: damaged HDF5 file: ") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out")
