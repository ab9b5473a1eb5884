"""A seeded mutation fuzzer for every reader: damaged copies of real small models and containers,
driven through the CLI in a worker process that a crash or a hang cannot take down with us.

    python tests/fuzzing.py --cases 10000 --seed 1      (what `make fuzz` runs)

Each case: a mutated copy of one corpus file, one command on it. Checked: exit code 0 or 2, no
traceback, the input's bytes unchanged, nothing left at the output path on failure, and a container
that restores gives exactly the tensors it was packed from. A failing case prints its seed and case
number, which reproduce it exactly.
"""

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASE_TIMEOUT = 60  # seconds, as the replay of hostile files allows (a spinning HDF5 walk stops at 3 s of CPU)
REPLY = "@@wcompress-fuzz "  # marks the worker's replies among anything a library prints

COMMANDS = {
    "profile": lambda src, out: ["profile", src, "--json"],
    "strip": lambda src, out: ["strip", src, "-o", out],
    "pack": lambda src, out: ["pack", src, "-o", out + ".h5"],
    "restore": lambda src, out: ["restore", src, "-o", out + "/"],
    "report": lambda src, out: ["report", src, "--json"],
}
CONTAINER_COMMANDS = ("profile", "restore", "report")
MODEL_COMMANDS = ("profile", "strip", "pack")


def build_corpus(folder):
    """Small real files of every format we read, and containers packed from them."""
    sys.path.insert(0, HERE)
    import numpy as np
    from conftest import build_tf1_checkpoint, build_tiny_keras

    from wcompress import samples

    import keras

    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(0)  # the same weights every run, so a seed and case number reproduce a failure
    model = build_tiny_keras()
    model(np.zeros((1, 12), np.float32))
    corpus = {}
    corpus["keras"] = os.path.join(folder, "tiny.keras")
    model.save(corpus["keras"])
    corpus["weights_h5"] = os.path.join(folder, "tiny.weights.h5")
    model.save_weights(corpus["weights_h5"])
    corpus["legacy_h5"] = os.path.join(folder, "tiny.h5")
    model.save(corpus["legacy_h5"])
    mhc = samples.fetch("mhcnuggets", cache=os.path.join(os.path.dirname(HERE), ".cache", "samples"))
    corpus["legacy_weights"] = os.path.join(folder, "mhc.h5")
    shutil.copy(mhc, corpus["legacy_weights"])
    prefix = build_tf1_checkpoint(os.path.join(folder, "tf1", "model.ckpt"))
    corpus["tf1_index"] = prefix + ".index"
    from click.testing import CliRunner

    from wcompress.cli import cli

    # A 2:4 model, so that the container below holds the N:M encoding too.
    corpus["pattern_h5"] = os.path.join(folder, "tiny-2of4.h5")
    CliRunner().invoke(cli, ["sparsify", corpus["legacy_h5"], "--method", "relative", "--pattern", "2:4",
                             "--min-size", "0", "-o", corpus["pattern_h5"]], catch_exceptions=False)
    for name in ("keras", "legacy_weights", "pattern_h5"):
        container = os.path.join(folder, f"{name}.container.h5")
        CliRunner().invoke(cli, ["pack", corpus[name], "-o", container], catch_exceptions=False)
        corpus[f"container_{name}"] = container
    # ecq levels (context-coded) of mhcnuggets' kernels, some large enough for their own datasets.
    container = os.path.join(folder, "legacy_weights.ecq.container.h5")
    CliRunner().invoke(cli, ["pack", corpus["legacy_weights"], "--values", "ecq", "--qp", "-8", "-o", container],
                       catch_exceptions=False)
    corpus["container_legacy_weights_ecq"] = container
    # ecq with calibration data: the tiny model's biases as ecq vectors, Exp-Golomb coded.
    data = os.path.join(folder, "tiny-data.npz")
    np.savez(data, x=np.random.default_rng(0).random((32, 12), dtype=np.float32))
    container = os.path.join(folder, "keras.ecq.container.h5")
    CliRunner().invoke(cli, ["pack", corpus["keras"], "--values", "ecq", "--qp", "0", "--data", data, "-o", container],
                       catch_exceptions=False)
    corpus["container_keras_ecq"] = container
    container = os.path.join(folder, "tf1.container.h5")
    CliRunner().invoke(cli, ["pack", prefix, "-o", container], catch_exceptions=False)
    corpus["container_tf1"] = container
    # HDF5-filter streams (mhcnuggets' kernels are large enough to be filtered), of a TF1 checkpoint and of
    # a Keras file: a filter decodes damaged bytes inside libhdf5.
    for codec in ("gzip", "lzf"):
        for name, source in (("legacy_weights", corpus["legacy_weights"]), ("tf1", prefix)):
            container = os.path.join(folder, f"{name}.{codec}.container.h5")
            CliRunner().invoke(cli, ["pack", source, "--codec", codec, "-o", container], catch_exceptions=False)
            corpus[f"container_{name}_{codec}"] = container
    # Version 1 had no checksums: damage may restore silently, but never without the warning that says so.
    container = os.path.join(folder, "v1.container.h5")
    CliRunner().invoke(cli, ["pack", corpus["legacy_weights"], "--codec", "none", "-o", container],
                       catch_exceptions=False)
    from helpers import as_version_1

    as_version_1(container)
    corpus["container_v1"] = container
    return corpus


def container_source(name, corpus):
    """The model a corpus container was packed from."""
    source = {"container_v1": "legacy_weights"}.get(name) or name[len("container_"):]
    for codec in ("_gzip", "_lzf", "_ecq"):
        source = source[: -len(codec)] if source.endswith(codec) else source
    source = corpus["tf1_index"] if source == "tf1" else corpus[source]
    return source[: -len(".index")] if source.endswith(".index") else source


def mutate(data, rng):
    """One random damage: flipped bytes, a truncation, an overwritten range, or a repeated chunk."""
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "flip", "truncate", "overwrite", "repeat", "zero"])
    if kind == "flip":
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(len(data)):]
    elif kind in ("overwrite", "zero"):
        start = rng.randrange(len(data))
        length = min(len(data) - start, rng.choice([2, 8, 64, 512]))
        data[start:start + length] = bytes(length) if kind == "zero" else rng.randbytes(length)
    else:
        start = rng.randrange(len(data))
        chunk = data[start:start + rng.choice([4, 64, 1024])]
        at = rng.randrange(len(data))
        data[at:at + len(chunk)] = chunk
    return bytes(data), kind


HOSTILE_NAMES = ("../../escaped", "/{scratch}/abs-escaped", "", ".", "..", "a/../../escaped", "..\\escaped", "x\0y")
ODD_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint64", "float16", "float64", "bool", "object", "bogus")


def craft(target, name, rng, scratch):
    """One structured edit of a placed copy, as a crafted file would carry: HDF5 attributes and datasets
    rewritten through h5py, a container's index re-declared (its checksum recomputed half the time, so
    the checks behind the checksum are reached), a .keras archive's entries replaced."""
    import h5py

    if name.startswith("container_"):
        with h5py.File(target, "r+") as h5:
            kind = rng.choice(["source_name", "source_name", "root_attr", "root_attr", "index", "index", "index",
                               "dataset", "blob", "blob_attr"])
            if kind == "source_name":
                h5.attrs["source_name"] = rng.choice(HOSTILE_NAMES).replace("/{scratch}", scratch)
            elif kind == "root_attr":
                key = rng.choice(["version", "codec", "values", "format", "source_format", "index_crc32",
                                  "source_name"])
                h5.attrs[key] = rng.choice([1, 2, 3, 4, 5, -1, 2**40, "x", "keras", "savedmodel", "tf1-checkpoint",
                                            "tf2-checkpoint", "keras-h5", "weights-h5", "float16", "gzip"])
                kind = f"root_attr:{key}"
            elif kind == "dataset":
                _replace_dataset(h5, rng, rng.choice(["streams", "skeleton", "raw", "index"]))
            elif kind == "blob":  # a skeleton file or raw entry replaced, dropped or duplicated
                _craft_blob(h5, rng)
            elif kind == "blob_attr":  # what version 1 named blobs by; later versions must not rely on it
                blobs = [n for n in _datasets(h5) if n.startswith(("skeleton/", "raw/"))]
                if blobs:
                    h5[rng.choice(blobs)].attrs[rng.choice(["path", "key"])] = rng.choice(
                        ["model.h5", "model.meta", "../x", "", "_CHECKPOINTABLE_OBJECT_GRAPH", "model.keras"])
            else:
                kind = _craft_index(h5, rng)
        return kind
    if name == "keras":
        return _craft_zip(target, rng, scratch)
    with h5py.File(target, "r+") as h5:
        return _craft_h5(h5, rng)


def _craft_index(h5, rng):
    import lzma
    import zlib

    import numpy as np

    index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
    entry = rng.choice(index["tensors"])
    field = rng.choice(["dtype", "value_dtype", "stream_dtype", "shape", "nnz", "entries", "count", "offset", "name",
                        "duplicate", "encoding", "stream_name", "drop_stream", "checksum", "coder", "coded_bytes",
                        "pattern", "quantized", "tree", "tree"])
    streams = entry["streams"]
    ref = streams[rng.choice(sorted(streams))]
    if field in ("dtype", "value_dtype"):
        entry[field] = rng.choice(ODD_DTYPES)
    elif field == "stream_dtype":
        ref["dtype"] = rng.choice(ODD_DTYPES)
    elif field == "shape":
        shape = entry["shape"]
        entry["shape"] = rng.choice([shape[::-1], shape + [1], shape + [2], [], [-1] + shape[1:], [2**31] + shape[1:],
                                     [d * 2 for d in shape], [2**20, 2**20]])
    elif field in ("nnz", "entries"):
        entry[field] = rng.choice([0, -1, entry[field] + 1, max(entry[field] - 1, 0), 2**40])
    elif field == "count":
        ref["count"] = rng.choice([0, -1, ref["count"] + 1, max(ref["count"] - 1, 0), 2**40])
    elif field == "offset" and "offset" in ref:
        ref["offset"] = rng.choice([-1, ref["offset"] + 1, ref["offset"] + 4, 2**40])
    elif field == "offset" and "pool" in ref:  # version 9: offsets are implicit, a declared one is refused
        ref["offset"] = rng.choice([0, -1, 4, 2**40])
    elif field == "name":
        entry["name"] = rng.choice(["", " ", "../x", "a\0b", None, 7])
    elif field == "duplicate":
        index["tensors"].append(dict(entry))
    elif field == "encoding":
        entry["encoding"] = rng.choice(["dense", "bitmask", "coo", "csr", "delta8", "nm", "ecq", "zip"])
    elif field == "quantized":
        entry["quantized"] = rng.choice([{"ecq": 0, "axis": 1}, {"ecq": 99, "axis": 1}, {"ecq": "0", "axis": 1},
                                         {"bits": 8, "axis": 1}, {"ecq": 0, "axis": 7}, {"ecq": 0, "axis": None}, None, [], 3])
    elif field == "pattern":
        entry["pattern"] = rng.choice([[2, 4], [1, 4], [4, 4], [0, 4], [2, 3], [2, 32], [2], "2:4", None, [2.0, 4]])
    elif field == "stream_name":
        key = "pool" if "pool" in ref else "dataset"
        ref[key] = rng.choice(["../index", "index", "/skeleton/0", "nope", "0.values"])
    elif field == "drop_stream":
        del streams[rng.choice(sorted(streams))]
    elif field == "coder":
        ref["coder"] = rng.choice(["raw", "zstd", "pcodec", "brotli", None, 3])
    elif field == "coded_bytes":
        ref["bytes"] = rng.choice([0, -1, ref.get("bytes", 0) + 1, max(ref.get("bytes", 0) - 1, 0), 2**40, "9"])
    elif field == "tree" and index.get("skeleton_trees"):
        _craft_tree(index["skeleton_trees"], rng)
    elif field == "checksum" and index.get("checksums"):
        key = rng.choice(sorted(index["checksums"]))
        index["checksums"][key] = rng.choice([None, "x", index["checksums"][key] ^ 1])
    packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
    del h5["index"]
    h5["index"] = packed
    recompute = rng.random() < 0.5
    if recompute:
        h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())
    return f"index:{field}" + (":crafted" if recompute else "")


def _craft_tree(trees, rng):
    """A skeleton tree (version 9) re-declared: hostile paths and names, odd types and shapes, deep nesting."""
    rel = rng.choice(sorted(trees))
    nodes, stack = [], [trees[rel]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("children", {}).values())
    node = rng.choice(nodes)
    edit = rng.choice(["path", "name", "dataset", "attribute", "nest", "type"])
    if edit == "path":
        trees[rng.choice(HOSTILE_NAMES + ("model.h5/x", "model.h5"))] = trees.pop(rel)
    elif edit == "name" and node.get("children"):
        node["children"][rng.choice(["", ".", "..", "a/b", "x\0y", 7])] = node["children"].pop(
            rng.choice(sorted(node["children"])))
    elif edit == "dataset":
        node["dataset"] = rng.choice([["<f4", [2**40, 2**40]], ["|O", [2]], ["<f4", [-1]], ["<f4"], "x",
                                      ["<f4", [1] * 64]])
    elif edit == "attribute" and node["attrs"]:
        key = rng.choice(sorted(node["attrs"]))
        node["attrs"][key] = rng.choice([["text:utf-8:0", None, []], ["text:utf-8:3", [2], ["abcdef", "\u4e2d"]],
                                         ["<f8", [2**31], []], ["bogus", None, [1]], ["<i8", None, ["1"]], None,
                                         ["text:utf-8:0", [2**62, 2**62], []]])
    elif edit == "nest":
        deep = {"attrs": {}, "children": {}}
        for _ in range(200):
            deep = {"attrs": {}, "children": {"g": deep}}
        node.setdefault("children", {})["deep"] = deep
    else:
        node.pop(rng.choice(["attrs", "children", "dataset"]), None)


def _craft_blob(h5, rng):
    import lzma

    import numpy as np

    blobs = [n for n in _datasets(h5) if n.startswith(("skeleton/", "raw/"))]
    if not blobs:
        return
    victim = rng.choice(blobs)
    choice = rng.choice(["drop", "swap", "rezip", "extra"])
    if choice == "drop":
        del h5[victim]
    elif choice == "swap" and len(blobs) > 1:
        other = rng.choice([b for b in blobs if b != victim])
        data = h5[other][()]
        del h5[victim]
        h5[victim] = data
    elif choice == "rezip":  # valid xz of other bytes: only a checksum can tell
        data = np.frombuffer(lzma.compress(rng.randbytes(rng.choice([0, 10, 4000]))), dtype=np.uint8)
        del h5[victim]
        h5[victim] = data
    else:
        h5[victim.split("/")[0] + "/99"] = h5[victim][()]


def _datasets(h5):
    import h5py

    names = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(names)


def _replace_dataset(h5, rng, under=None):
    """Swap one dataset for another shape, dtype, an empty dataspace, a group, a link or a huge unwritten one."""
    import h5py
    import numpy as np

    names = [n for n in _datasets(h5) if under is None or n.startswith(under)]
    if not names:
        return
    victim = rng.choice(names)
    old = h5[victim]
    shape, dtype = old.shape, old.dtype
    del h5[victim]
    choice = rng.choice(["shape", "dtype", "empty", "group", "soft", "cycle", "huge", "scalar"])
    if choice == "shape":
        h5[victim] = np.ones(tuple(d + 1 for d in shape) or (3,), dtype)
    elif choice == "dtype":
        h5[victim] = np.ones(shape, rng.choice(["i2", "i8", "f2", "f8", "S3", "u1"]))
    elif choice == "empty":
        h5.create_dataset(victim, data=h5py.Empty("f4"))
    elif choice == "group":
        h5.create_group(victim)
    elif choice == "soft":
        h5[victim] = h5py.SoftLink(rng.choice(["/nowhere", "/" + victim]))
    elif choice == "cycle":
        h5[victim] = h5["/"]
    elif choice == "huge":
        h5.create_dataset(victim, shape=(2**16, 2**16), dtype="f4")
    else:
        h5[victim] = np.float32(1)


def _craft_h5(h5, rng):
    import numpy as np

    kind = rng.choice(["dataset", "dataset", "attr", "attr"])
    if kind == "dataset":
        _replace_dataset(h5, rng)
        return "h5:dataset"
    owners = [h5] + [h5[n] for n in _groups(h5)]
    owner = rng.choice(owners)
    keys = list(owner.attrs) or ["layer_names"]
    key = rng.choice(keys + ["layer_names", "weight_names", "model_config", "name"])
    owner.attrs[key] = rng.choice([7, np.arange(3), np.array([b"nope"]), np.array([b""]), "{", "[" * 5000,
                                   json.dumps({"config": {"layers": [{"config": 1}]}}), np.array([], "S1")])
    return "h5:attr"


def _groups(h5):
    import h5py

    names = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) else None)
    return names


def _craft_zip(target, rng, scratch):
    """Rewrite a .keras archive with one entry edited (its CRC then matches: the reader must check more)."""
    import zipfile

    import h5py

    with zipfile.ZipFile(target) as archive:
        entries = {i.filename: archive.read(i.filename) for i in archive.infolist()}
    kind = rng.choice(["config", "config", "weights_bytes", "weights_h5", "weights_h5", "extra"])
    if kind == "config":
        config = entries["config.json"]
        entries["config.json"] = rng.choice([mutate(config, rng)[0], b"[" * 100000, b"null", b'{"config": 7}',
                                             config.replace(b'"layers"', b'"layerz"'),
                                             config.replace(b'"dense"', b'"dense_9"')])
    elif kind == "weights_bytes":
        entries["model.weights.h5"] = mutate(entries["model.weights.h5"], rng)[0]
    elif kind == "weights_h5":
        inner = os.path.join(os.path.dirname(target), "inner.h5")
        with open(inner, "wb") as fh:
            fh.write(entries["model.weights.h5"])
        with h5py.File(inner, "r+") as h5:
            _craft_h5(h5, rng)
        with open(inner, "rb") as fh:
            entries["model.weights.h5"] = fh.read()
        os.remove(inner)
    else:
        entries[rng.choice(["../../escaped", scratch + "/abs-escaped", "model.weights.h5/../x"])] = b"x"
    os.remove(target)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for filename, data in entries.items():
            out.writestr(filename, data)
    return f"zip:{kind}"


def _digest(path):
    h = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(r, n) for r, _, ns in os.walk(path) for n in ns)
    for p in paths:
        with open(p, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


class Worker:
    """A child process that runs CLI invocations in-process, one JSON line per case."""

    started = set()  # every worker's pid: the fuzzer's own children, not orphans
    before = set()  # children the fuzzing process already had (a test runner's own helpers)

    def __init__(self, scratch):
        env = dict(os.environ, TMPDIR=scratch, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        Worker.started.add(self.proc.pid)

    def run(self, request, timeout):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        deadline = time.time() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.time()))
            if not ready:
                self.proc.kill()
                self.proc.wait()
                return {"outcome": "hang"}
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                return {"outcome": "crash", "signal": -self.proc.returncode}
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])

    def left_running(self):
        """Live processes the worker started that are still there between cases (killed once counted).
        Orphans of a worker killed after a hang come to the fuzzer, their subreaper."""
        left = _children_of(self.proc.pid) + [pid for pid in _children_of(os.getpid())
                                               if pid not in self.started | self.before]
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        return left

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def worker_loop():
    """The child's side: run each requested command, report exit code, output and tensor digest."""
    from click.testing import CliRunner
    from helpers import stock_tensors

    from wcompress.cli import cli

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("tensors"):
            try:
                tensors = stock_tensors(request["tensors"])
            except Exception as exc:  # noqa: BLE001 - stock TF refusing our output is the finding
                print(REPLY + json.dumps({"unreadable": f"{type(exc).__name__}: {exc}"[:300]}), flush=True)
                continue
            h = hashlib.sha256()
            for name in sorted(tensors):
                h.update(name.encode() + tensors[name].tobytes() + str(tensors[name].dtype).encode())
            print(REPLY + json.dumps({"digest": h.hexdigest()}), flush=True)
            continue
        result = CliRunner().invoke(cli, request["args"])
        escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
        reply = {"outcome": "ran", "exit": result.exit_code, "stderr": result.stderr[-2000:],
                 "traceback": escaped or "Traceback" in result.output}
        print(REPLY + json.dumps(reply), flush=True)


def fuzz(cases, seed, corpus_dir=None, log=print, keep=None):
    """Run `cases` mutated inputs; return the counts and every failing case (`keep`: a folder where
    failing cases' inputs are copied, to reproduce them by hand)."""
    rng = random.Random(seed)
    Worker.before = set(_children_of(os.getpid()))
    _become_subreaper()
    scratch = tempfile.mkdtemp(prefix="wcompress-fuzz-")
    counts = {"cases": 0, "exit0": 0, "exit2": 0, "crashes": 0, "hangs": 0, "silent_corruptions": 0,
              "unverifiable_v1_restores": 0, "modified_inputs": 0, "tracebacks": 0, "other_exits": 0,
              "leftovers": 0, "escapes": 0, "processes_left_running": 0}
    failures = []
    try:
        corpus = build_corpus(corpus_dir or os.path.join(scratch, "corpus"))
        worker = Worker(scratch)
        truth = {}
        for name, path in corpus.items():  # what each container must restore to
            if name.startswith("container_"):
                source = container_source(name, corpus)
                if name.endswith("_ecq"):  # lossy: the truth is what the pristine container restores to
                    out = os.path.join(scratch, f"truth-{name}", "result")
                    worker.run({"args": COMMANDS["restore"](path, out)}, 300)
                    source = _only_output(out)
                truth[name] = worker.run({"tensors": source}, 300)["digest"]
        pristine = {name: open(path, "rb").read() for name, path in corpus.items()}
        started = time.time()
        for number in range(cases):
            name = rng.choice(sorted(corpus))
            structured = name != "tf1_index" and rng.random() < 0.35
            data, kind = (pristine[name], None) if structured else mutate(pristine[name], rng)
            command = rng.choice(CONTAINER_COMMANDS if name.startswith("container_") else MODEL_COMMANDS)
            case_dir = os.path.join(scratch, f"case{number}")
            os.makedirs(case_dir)
            src = _place(corpus[name], data, case_dir)
            if structured:
                try:
                    kind = craft(src, name, rng, scratch)
                except Exception as exc:  # noqa: BLE001 - h5py refused this edit: the case stays a plain copy
                    kind = f"craft refused ({type(exc).__name__})"
            # A crafted index with matching checksums is a valid container of other tensors.
            checked_tensors = not (kind or "").endswith(":crafted")
            before = _digest(os.path.dirname(src))
            out = os.path.join(case_dir, "out", "result")
            reply = worker.run({"args": COMMANDS[command](src, out)}, CASE_TIMEOUT)
            problem = None
            if reply["outcome"] in ("hang", "crash"):
                counts["hangs" if reply["outcome"] == "hang" else "crashes"] += 1
                problem = reply["outcome"]
                worker = Worker(scratch)
            else:
                counts[{0: "exit0", 2: "exit2"}.get(reply["exit"], "other_exits")] += 1
                if reply["exit"] not in (0, 2):
                    problem = f"exit {reply['exit']}: {reply['stderr'].strip()[-300:]}"
                elif reply["traceback"]:
                    counts["tracebacks"] += 1
                    problem = "traceback"
                elif reply["exit"] == 2 and os.path.exists(os.path.join(case_dir, "out")):
                    counts["leftovers"] += 1
                    problem = "output left after a failure"
                elif reply["exit"] == 0 and command == "restore" and checked_tensors:
                    restored = _only_output(out)
                    answer = worker.run({"tensors": restored}, 300)
                    if "digest" not in answer:  # stock TF itself could not read what we wrote
                        worker = Worker(scratch)
                    if answer.get("digest") != truth[name]:
                        if name == "container_v1" and "cannot be detected" in reply["stderr"]:
                            counts["unverifiable_v1_restores"] += 1  # read, as it must be, and the user was told
                        else:
                            counts["silent_corruptions"] += 1
                            problem = f"restored tensors differ from the packed ones ({answer})"
            left = worker.left_running()
            if left:  # a child of a finished command (a structure walker, a pool worker) still runs
                counts["processes_left_running"] += 1
                problem = problem or f"processes left running: {left}"
            if _digest(os.path.dirname(src)) != before:
                counts["modified_inputs"] += 1
                problem = problem or "input modified"
            strays = [n for n in os.listdir(case_dir) if n not in ("in", "out")] + [
                n for n in os.listdir(scratch) if "escaped" in n]
            if strays:  # a path named inside the file was used as a place to write
                counts["escapes"] += 1
                problem = problem or f"wrote outside the output folder: {strays}"
                for n in strays:
                    stray = os.path.join(scratch, n)
                    if "escaped" in n:
                        shutil.rmtree(stray) if os.path.isdir(stray) else os.remove(stray)
            counts["cases"] += 1
            if problem:
                failures.append({"seed": seed, "case": number, "file": name, "mutation": kind, "command": command,
                                 "problem": problem})
                log(f"FAIL seed={seed} case={number} {name} {kind} {command}: {problem}")
                if keep:
                    shutil.copytree(os.path.dirname(src), os.path.join(keep, f"seed{seed}-case{number}"))
            shutil.rmtree(case_dir, ignore_errors=True)
            if number and number % 500 == 0:
                log(f"{number} cases, {time.time() - started:.0f} s, {len(failures)} failures")
        worker.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _become_subreaper(False)
    return counts, failures


def _children_of(parent):
    """Live (not zombie) processes whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                found.append(int(entry))
    return found


def _become_subreaper(on=True):
    """Orphaned descendants (of a worker killed after a hang) are re-parented to this process, where the
    leftover check sees them, instead of to init."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(36, int(on))  # PR_SET_CHILD_SUBREAPER
    except (AttributeError, OSError):
        pass


def _place(original, data, case_dir):
    """Write the mutated file where a user would have it (a checkpoint keeps its sibling files)."""
    if original.endswith(".index"):
        folder = os.path.join(case_dir, "in")
        shutil.copytree(os.path.dirname(original), folder)
        target = os.path.join(folder, os.path.basename(original))
        with open(target, "wb") as fh:
            fh.write(data)
        return target[: -len(".index")]
    folder = os.path.join(case_dir, "in")
    os.makedirs(folder)
    target = os.path.join(folder, os.path.basename(original))
    with open(target, "wb") as fh:
        fh.write(data)
    return target


def _only_output(folder):
    names = [n for n in os.listdir(folder) if n != "checkpoint"]
    index = [n for n in names if n.endswith(".index")]
    if index:
        return os.path.join(folder, index[0][: -len(".index")])
    return os.path.join(folder, names[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", help="Copy each failing case's input into this folder.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, HERE)
        worker_loop()
        return
    counts, failures = fuzz(args.cases, args.seed, keep=args.keep)
    print(json.dumps({"seed": args.seed, **counts}, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
