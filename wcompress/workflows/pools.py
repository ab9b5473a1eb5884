"""Where variants are scored: this process, `jobs` local worker processes, or a Ray cluster (cluster.py)."""

from wcompress.errors import WcompressError
from wcompress.formats.child import WorkerPool
from wcompress.workflows.variants import dense_score, score_variant


def _score_in_worker(job):
    variant, spec = job
    return score_variant(variant, spec)


def open_pool(spec, jobs=1, cluster=None, paths=()):
    """Where variants are scored: this process or `jobs` local processes (Pool), or a Ray cluster
    (cluster.RayPool, given a cluster.Cluster; `paths` are the files its workers need besides the spec's)."""
    if cluster is None:
        return Pool(spec, jobs)
    if jobs != 1:
        raise WcompressError("--jobs and --ray both say where to evaluate: give one (--ray-cpus-per-worker sets "
                             "how many workers a Ray node runs)")
    from wcompress.workflows.cluster import RayPool

    return RayPool(spec, cluster, paths)


class Pool:
    """Scores variants in order, in this process or in `jobs` spawned workers kept for the whole run."""

    def __init__(self, spec, jobs=1):
        self.spec, self.jobs, self._executor = spec, max(1, int(jobs)), None
        if jobs < 1:
            raise WcompressError(f"--jobs must be 1 or more, got {jobs}")

    def __enter__(self):
        if self.jobs > 1:
            self._pool = WorkerPool(self.jobs)
            self._executor = self._pool.__enter__()
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            self._pool.__exit__(*exc)

    def describe(self):
        return {"backend": "processes", "workers": self.jobs}

    def dense(self, model, spec=None):
        """The unchanged model's score (in this process)."""
        return dense_score(model, spec or self.spec)[0]

    def score(self, variants, advance=None, spec=None):
        """Rows for `variants`, in their order; advance(row) after each."""
        spec = spec or self.spec
        if self._executor is None:
            rows = []
            for v in variants:
                rows.append(score_variant(v, spec))
                if advance:
                    advance(rows[-1])
            return rows
        rows = []
        for row in self._executor.map(_score_in_worker, [(v, spec) for v in variants]):
            rows.append(row)
            if advance:
                advance(row)
        return rows
