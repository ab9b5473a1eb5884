"""--ray: the evaluations of sweep, autotune and ensemble-search on a Ray cluster.

Workers are Ray actors, one per `cpus_per_worker` CPUs of the cluster; each loads the model and the data
once (as a --jobs process does) and scores many variants in memory. The files a worker needs (models,
data, reference, calibration inputs) travel through Ray's object store and are written into a private
temp folder on the worker's node, so nodes need neither the paths nor the files. Results come back in
the order asked, whatever finishes first, so rows equal those of --jobs 1. A worker process that dies is
restarted by Ray and its unfinished evaluations are run again (max_restarts / max_task_retries).

A worker runs TensorFlow with as many threads as it has CPUs, the same on every node. Sums split over
fewer threads than a --jobs 1 process uses can round differently in the last bits: rank metrics (top-k,
fidelity, AUC, GAP) come out identical, continuous ones (cosine, mse) agree to about 1e-7.
"""

import glob
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, fields, replace

from wcompress.errors import WcompressError

INSTALL = "--ray needs Ray: pip install 'wcompress[ray]'"
RESTARTS = 3  # per worker; each restart reloads the model, and the interrupted evaluation runs again
MAX_SHIPPED_BYTES = 8 << 30  # files larger than this stay paths: the cluster must see them (a shared disk)


@dataclass(frozen=True)
class Cluster:
    """Where to run: `address` None starts a local Ray instance; 'auto' or 'ray://host:port' joins one."""

    address: str = None
    cpus_per_worker: float = 1.0
    workers: int = None  # default: the cluster's CPUs / cpus_per_worker


def connect(cluster):
    """ray, and whether this call connected (and so must disconnect)."""
    try:
        import ray
    except ImportError as exc:
        raise WcompressError(INSTALL) from exc
    if ray.is_initialized():
        return ray, False
    import logging

    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                   configure_logging=True)
    try:
        if cluster.address in (None, "local"):
            ray.init(address="local", **options)
        else:
            ray.init(address=cluster.address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise WcompressError(f"cannot reach the Ray cluster at {cluster.address or 'a new local instance'} "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    _messages_to_stderr()
    return ray, True


def _messages_to_stderr():
    """Ray's driver prints the cluster's error messages (a worker lost, …) on stdout, where --json output
    goes: show each as one line on stderr instead."""
    import sys

    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return

    def show(data, ignore_prefix=False):
        for line in data.get("lines", ()):
            text = str(line).strip()
            if text:
                sys.stderr.write(f"wcompress: ray: {text.splitlines()[0][:300]}\n")

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = show


def files_of(path):
    """{relative name: bytes} of the files a path stands for: a file, a folder (every file under it), or a
    checkpoint prefix (the files named PREFIX.*); None when it is none of these (module:function data)."""
    if path is None:
        return None
    if os.path.isfile(path):
        return {os.path.basename(path): _read(path)}
    if os.path.isdir(path):
        out = {}
        for folder, _, names in os.walk(path):
            for name in names:
                full = os.path.join(folder, name)
                out[os.path.relpath(full, path)] = _read(full)
        return out
    matches = [p for p in glob.glob(glob.escape(path) + ".*") if os.path.isfile(p)]
    if matches:
        # The folder's `checkpoint` file too: TF's readers look for it beside a prefix.
        beside = os.path.join(os.path.dirname(path) or ".", "checkpoint")
        out = {os.path.basename(p): _read(p) for p in matches}
        if os.path.isfile(beside):
            out["checkpoint"] = _read(beside)
        return out
    return None


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(p) for p in glob.glob(glob.escape(path) + ".*") if os.path.isfile(p))


def spec_paths(spec):
    """The paths an evaluation spec reads: its data, the reference model, a custom-objects file."""
    return [p for p in (spec.data, spec.reference, spec.custom_objects) if isinstance(p, str)]


class _Worker:
    """One Ray actor: the shipped files in a private folder, this process's loaded models and data. The
    files come with every call (references, fetched once): a worker Ray restarts after a loss fetches them
    again before its first evaluation."""

    def __init__(self, threads):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.root, self.run_folder, self.local = None, None, None
        # TensorFlow uses every core of the node by default: a worker keeps to the CPUs Ray gave it, so
        # that several workers on a node do not fight over the same cores.
        from wcompress.formats.tfenv import tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    def _fetch(self, shipped):
        """Write the run's files into this worker's folder, inside the run's folder on this node (so that
        a surviving worker's close() also removes what a lost one left)."""
        import ray

        if self.local is not None:
            return
        self.run_folder = os.path.join(tempfile.gettempdir(), f"wcompress-ray-{shipped['run']}")
        os.makedirs(self.run_folder, mode=0o700, exist_ok=True)
        self.root = tempfile.mkdtemp(prefix="worker-", dir=self.run_folder)
        # Every temporary file this process makes from now on (a .keras archive's extracted weights, …)
        # goes inside the run's folder too: Ray ends its workers without running their finalizers, and
        # close() removes the folder.
        tempfile.tempdir = self.root
        self.local = {}
        files = shipped["files"]
        originals = list(files)
        contents = ray.get([files[p] for p in originals])
        for number, (original, files) in enumerate(zip(originals, contents)):
            base = os.path.join(self.root, str(number))
            for relative, data in files.items():
                target = os.path.normpath(os.path.join(base, relative))
                if not target.startswith(base + os.sep):
                    raise ValueError(f"refusing to write {relative!r} outside the worker's folder")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as fh:
                    fh.write(data)
            if os.path.isdir(original):
                self.local[original] = base
            else:
                self.local[original] = os.path.join(base, os.path.basename(os.path.normpath(original)))

    def pid(self):
        return os.getpid()

    def _here(self, value):
        """A dataclass (Variant, EvalSpec) with every shipped path replaced by its copy on this node."""
        changes = {f.name: self.local[getattr(value, f.name)] for f in fields(value)
                   if isinstance(getattr(value, f.name), str) and getattr(value, f.name) in self.local}
        return replace(value, **changes) if changes else value

    def score(self, shipped, index, variant, spec):
        from wcompress.workflows.variants import score_variant

        self._fetch(shipped)
        return index, score_variant(self._here(variant), self._here(spec))

    def dense(self, shipped, index, model, spec):
        from wcompress.workflows.variants import dense_score

        self._fetch(shipped)
        return index, dense_score(self.local.get(model, model), self._here(spec))[0]

    def candidate(self, shipped, index, path, dtype, spec):
        from wcompress.workflows.variants import score_candidate

        self._fetch(shipped)
        return index, score_candidate((self.local.get(path, path), dtype, self._here(spec)))

    def localized(self, shipped, path):
        """Where this worker reads `path` from (its copy, once fetched)."""
        self._fetch(shipped)
        return self.local.get(path, path)

    def close(self):
        if self.root:
            shutil.rmtree(self.run_folder, ignore_errors=True)


def worker_name(number, pid=None):
    return f"wcompress-{pid or os.getpid()}-worker-{number}"


class RayPool:
    """The Pool of variants.py on a Ray cluster: `jobs` workers, results in the order asked."""

    def __init__(self, spec, cluster, paths=()):
        self.spec, self.cluster = spec, cluster
        self.paths = [p for p in dict.fromkeys(list(paths) + spec_paths(spec)) if p]
        self.workers, self.jobs, self._ray, self._connected, self._started = [], 1, None, False, {}
        self._shipped = {}

    def __enter__(self):
        ray, self._connected = connect(self.cluster)
        self._ray = ray
        try:
            shipped = {}
            for path in self.paths:
                if _size(path) > MAX_SHIPPED_BYTES:
                    continue  # too large to ship: the cluster must see this path itself
                files = files_of(path)
                if files is not None:
                    shipped[path] = ray.put(files)
            self._shipped = {"run": f"{os.getpid()}-{uuid.uuid4().hex[:12]}", "files": shipped}
            cpus = float(ray.cluster_resources().get("CPU", 1))
            fits = max(1, int(cpus // self.cluster.cpus_per_worker))  # more would wait for CPUs forever
            count = min(self.cluster.workers or fits, fits)
            remote = ray.remote(num_cpus=self.cluster.cpus_per_worker, max_restarts=RESTARTS,
                                max_task_retries=RESTARTS)(_Worker)
            # Named by this process: a caller (or a test) can find a run's workers with ray.get_actor.
            threads = max(1, int(round(self.cluster.cpus_per_worker)))
            self.workers = [remote.options(name=worker_name(i)).remote(threads) for i in range(count)]
            self.jobs = count
            self._started = dict(zip(range(count), ray.get([w.pid.remote() for w in self.workers])))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        ray = self._ray
        if ray is None:
            return
        try:
            if self.workers:
                ray.get([w.close.remote() for w in self.workers], timeout=60)
        except Exception:  # noqa: BLE001 - a worker already gone leaves nothing to clean on its node
            pass
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        if self._connected:
            ray.shutdown()

    def describe(self):
        return {"backend": "ray", "workers": self.jobs, "restarted_workers": self.restarts()}

    def restarts(self):
        """How many workers are not the process they started as (Ray restarted them after a loss)."""
        now = self._ray.get([w.pid.remote() for w in self.workers])
        return sum(1 for i, pid in enumerate(now) if pid != self._started[i])

    def _run(self, method, jobs, advance):
        """[result] of worker.method(index, *job) for every job, in order; advance(result) as each ends."""
        from ray.util import ActorPool

        from ray import exceptions

        pool = ActorPool(self.workers)
        results = [None] * len(jobs)
        calls = ((self._shipped, i, *job) for i, job in enumerate(jobs))
        try:
            for index, result in pool.map_unordered(lambda w, args: getattr(w, method).remote(*args), calls):
                results[index] = result
                if advance:
                    advance(result)
        except exceptions.RayTaskError as exc:  # the worker's own error, as it would be raised here
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else WcompressError(str(exc).splitlines()[0])) from exc
        except exceptions.RayActorError as exc:
            raise WcompressError(f"a Ray worker was lost more than {RESTARTS} times; its evaluations could not "
                                 "finish") from exc
        return results

    def score(self, variants, advance=None, spec=None):
        """Rows for `variants`, in their order; advance(row) after each."""
        spec = spec or self.spec
        return self._run("score", [(v, spec) for v in variants], advance)

    def dense(self, model, spec=None):
        """The unchanged model's score, computed by a worker (the driver need not load the model)."""
        return self._run("dense", [(model, spec or self.spec)], None)[0]

    def candidates(self, models, dtype, spec=None):
        spec = spec or self.spec
        return self._run("candidate", [(m, dtype, spec) for m in models], None)
