"""Bad input: one line on stderr, exit code 2, input untouched, nothing half-written."""

import os
import shutil

import pytest
from helpers import abort_like_a_damaged_file, digest, run_cli, run_error


def _copy_checkpoint(src_prefix, dest_dir):
    os.makedirs(dest_dir, exist_ok=True)
    folder, base = os.path.split(src_prefix)
    for f in os.listdir(folder):
        if f.startswith(base + "."):
            shutil.copy(os.path.join(folder, f), dest_dir)
    return os.path.join(dest_dir, base)


def test_wrong_format(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a model\n")
    line = run_error("profile", bad)
    assert str(bad) in line and "unrecognised model format" in line


def test_missing_path(tmp_path):
    line = run_error("profile", tmp_path / "nothing.ckpt")
    assert "no such file" in line


def test_truncated_data_file(tiny, tmp_path):
    prefix = _copy_checkpoint(tiny["tf1"], tmp_path / "ck")
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as fh:
        fh.truncate(os.path.getsize(data) // 2)
    before = digest(tmp_path / "ck")
    line = run_error("strip", prefix, "-o", tmp_path / "out" / "m")
    assert prefix in line
    assert digest(tmp_path / "ck") == before
    assert not os.path.exists(tmp_path / "out")  # no output, no temp folder, not even the new parent


def test_missing_index(tiny, tmp_path):
    prefix = _copy_checkpoint(tiny["tf1"], tmp_path / "ck")
    os.remove(prefix + ".index")
    line = run_error("profile", prefix + ".meta")
    assert ".index" in line


def test_truncated_h5(real, tmp_path):
    bad = tmp_path / "fer.hdf5"
    data = open(real["fer"], "rb").read()
    bad.write_bytes(data[: len(data) // 3])
    line = run_error("profile", bad)
    assert str(bad) in line


def test_truncated_keras_archive(tiny, tmp_path):
    bad = tmp_path / "tiny.keras"
    data = open(tiny["keras"], "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    assert str(bad) in run_error("profile", bad)


@pytest.mark.parametrize("name", ["keras", "weights_h5"])
def test_output_equal_to_input(tiny, tmp_path, name):
    src = tmp_path / os.path.basename(tiny[name])
    shutil.copy(tiny[name], src)
    before = digest(src)
    line = run_error("strip", src, "-o", src)
    assert "overwrite the input" in line
    assert digest(src) == before


def test_output_equal_to_input_checkpoint(tiny, tmp_path):
    prefix = _copy_checkpoint(tiny["tf1"], tmp_path / "ck")
    before = digest(tmp_path / "ck")
    assert "overwrite the input" in run_error("strip", prefix, "-o", prefix)
    assert "overwrite the input" in run_error("strip", tmp_path / "ck", "-o", str(tmp_path / "ck") + "/")
    assert digest(tmp_path / "ck") == before


def test_existing_output_needs_force(tiny, tmp_path):
    out = tmp_path / "out.keras"
    out.write_bytes(b"precious")
    line = run_error("strip", tiny["keras"], "-o", out)
    assert "--force" in line and out.read_bytes() == b"precious"
    run_cli("strip", tiny["keras"], "-o", out, "--force")
    assert out.read_bytes()[:2] == b"PK"


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    from click.testing import CliRunner

    from wcompress.cli import cli

    result = CliRunner().invoke(cli, ["--debug", "profile", str(bad)])
    assert result.exit_code != 0 and result.exception is not None


@pytest.mark.parametrize("forked", [True, False])
def test_hdf5_structure_walk_that_crashes_is_one_line(real, tmp_path, monkeypatch, forked):
    from wcompress.errors import WcompressError
    from wcompress.formats import child, h5check

    model = tmp_path / "model.h5"
    shutil.copy(real["mhcnuggets"], model)
    # The walk crashes the way a damaged file crashes HDF5, in a fork of this process or in a fresh
    # interpreter, which imports the function by its module and name (from tests/, on its path).
    monkeypatch.setattr(child, "can_fork", lambda: forked)
    monkeypatch.setattr(h5check, "walk_structure", abort_like_a_damaged_file)
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(WcompressError, match="crashed the HDF5 library \\(SIGABRT\\)"):
        h5check.check_structure(str(model))
    monkeypatch.undo()
    h5check.check_structure(str(model))  # a sound file passes either way
