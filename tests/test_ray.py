"""--ray: sweep, autotune and ensemble-search on a real two-node Ray cluster started on this machine give
the answers of --jobs 1, also when a worker process is killed mid-run."""

import glob
import json
import os
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_error, run_json

from wcompress.cli import cli

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node joining it, one CPU each (two workers of --ray-cpus-per-worker 1)."""
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    local.add_node(num_cpus=1)
    local.wait_for_nodes()
    yield local.address
    local.shutdown()


@pytest.fixture(scope="module")
def held(faces, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray") / "held.npz"
    np.savez(path, x=np.load(faces["data"])["x"][40:])
    return str(path)


def sweep_args(real, held):
    return ["sweep", real["fer"], "--data", held, "--methods", "relative", "--deltas", "0:0.6:0.1",
            "--bits", "32,16"]


def test_sweep_on_a_two_node_cluster_equals_one_process(real, held, cluster):
    one = run_json(*sweep_args(real, held))
    spread = run_json(*sweep_args(real, held), "--ray", cluster)
    assert spread["evaluated_by"] == {"backend": "ray", "workers": 2, "restarted_workers": 0}
    assert one["evaluated_by"] == {"backend": "processes", "workers": 1}
    assert spread["rows"] == one["rows"] and spread["baseline"] == one["baseline"]
    assert not ray.is_initialized()  # the command disconnected


def test_a_worker_killed_mid_sweep_is_restarted_and_the_rows_are_the_same(real, held, cluster):
    from wcompress.workflows.cluster import worker_name

    args = sweep_args(real, held) + ["--ray", cluster, "--json"]
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("result", CliRunner().invoke(cli, args)))
    runner.start()
    killed = None
    while runner.is_alive() and killed is None:
        time.sleep(0.2)
        try:
            worker = ray.get_actor(worker_name(0)) if ray.is_initialized() else None
        except ValueError:  # not created yet
            continue
        if worker is not None:
            pid = ray.get(worker.pid.remote())  # answers between two evaluations
            time.sleep(0.5)  # into the next one
            os.kill(pid, signal.SIGKILL)
            killed = pid
    runner.join()
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    spread = json.loads(result.stdout)
    assert killed is not None and spread["evaluated_by"]["restarted_workers"] == 1
    assert spread["rows"] == run_json(*sweep_args(real, held))["rows"]
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"wcompress-ray-{os.getpid()}-*"))  # the lost one's too


def test_autotune_on_the_cluster_equals_one_process(mhc, cluster, tmp_path):
    args = ["autotune", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "0.05",
            "--max-evals", "40"]
    one = run_json(*args, "-o", tmp_path / "one.keras")
    spread = run_json(*args, "--ray", cluster, "-o", tmp_path / "spread.keras")
    # Two workers (like --jobs 2) may evaluate one more ladder level past the first failure: same answer.
    for key in ("uniform", "uniform_held_out", "methods", "tuned"):
        assert spread[key] == one[key], key
    assert open(spread["plan"]).read() == open(one["plan"]).read()


def test_ensemble_search_on_the_cluster_equals_one_process(mhc, cluster):
    args = ["ensemble-search", mhc["ba"], mhc["hlap"], "--data", mhc["data"], "--metric", "auc", "--budget", "10MB"]
    one, spread = run_json(*args), run_json(*args, "--ray", cluster)
    assert spread["combinations"] == one["combinations"] and spread["candidates"] == one["candidates"]


def test_workers_read_their_own_copies_shipped_through_ray(tiny, cluster):
    from wcompress.workflows.cluster import _Worker, files_of

    prefix = tiny["tf1"]  # a checkpoint prefix: its .index, .data and .meta files, and the folder's checkpoint
    files = files_of(prefix)
    assert {n.split(".")[-1] for n in files} >= {"index", "meta", "checkpoint"}
    ray.init(address=cluster)
    try:
        worker = ray.remote(_Worker).remote(1)
        shipped = {"run": "test", "files": {prefix: ray.put(files)}}
        local = ray.get(worker.localized.remote(shipped, prefix))
        assert local != prefix and os.path.basename(local) == os.path.basename(prefix)
        for name, data in files.items():
            with open(os.path.join(os.path.dirname(local), name), "rb") as fh:
                assert fh.read() == data
        ray.get(worker.close.remote())
        assert not os.path.exists(os.path.dirname(local))
        assert not os.path.exists(os.path.join(tempfile.gettempdir(), "wcompress-ray-test"))
    finally:
        ray.shutdown()


def test_without_ray_installed_the_flag_says_how_to_install_it(real, held, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray then fails as if it were not installed
    line = run_error(*sweep_args(real, held), "--ray")
    assert "pip install 'wcompress[ray]'" in line
    assert "--jobs and --ray" in run_error(*sweep_args(real, held), "--ray", "--jobs", "2")


def test_an_error_inside_a_worker_is_one_line(mhc, cluster, tmp_path):
    # The dense score runs on a worker: the metric needs labels the data does not have.
    unlabelled = str(tmp_path / "x.npz")
    np.savez(unlabelled, x=np.load(mhc["data"])["x"][:20])
    line = run_error("sweep", mhc["ba"], "--data", unlabelled, "--metric", "auc", "--deltas", "0.5",
                     "--methods", "relative", "--ray", cluster)
    assert "needs labels" in line


def test_sweep_of_a_tf1_graph_on_the_cluster_equals_one_process(real, cluster, tmp_path):
    """Packed bytes of a TF1 graph include its rewritten .meta, which must not depend on the process."""
    from helpers import musicnn_feed

    data = tmp_path / "x.npz"
    np.savez(data, x=next(iter(musicnn_feed(4).values())))
    args = ["sweep", real["musicnn"], "--data", data, "--methods", "relative", "--deltas", "0.3,0.6", "--bits", "32,16"]
    assert run_json(*args, "--ray", cluster)["rows"] == run_json(*args)["rows"]
