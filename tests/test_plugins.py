import os
import subprocess
import sys
import textwrap

import pytest
from helpers import run_json

from wcompress.errors import WcompressError
from wcompress.plugins import get_pass


def test_builtin_passes_load_through_entry_points():
    rows = {r["plugin"]: r for r in run_json("plugins")}
    assert "strip" in rows["strip"]["passes"]
    assert rows["strip"]["source"].startswith("entry point wcompress_plugins.strip")


def test_unknown_pass_is_a_clear_error():
    with pytest.raises(WcompressError, match="unknown pass 'nope'; available: .*strip"):
        get_pass("nope")


def install_fake_plugin(root, module, entry, source):
    """A module plus the dist-info that declares it under wcompress.passes, as pip would install it."""
    (root / f"{module}.py").write_text(source)
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[wcompress.passes]\n{entry} = {module}\n")
    return dict(os.environ, PYTHONPATH=str(root))


def test_third_party_plugin_via_entry_point(tmp_path):
    """A package installed beside wcompress registers a pass through the same entry-point group."""
    env = install_fake_plugin(tmp_path, "wc_extra", "negate", textwrap.dedent('''
        from wcompress.hookspecs import hookimpl
        from wcompress.methods.passes import Pass

        class Negate(Pass):
            name = "negate"
            def apply(self, info, array):
                return -array

        @hookimpl
        def register_passes(register):
            register(Negate())
    '''))
    out = subprocess.run([sys.executable, "-m", "wcompress.cli", "plugins", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    import json

    rows = {r["plugin"]: r for r in json.loads(out)}
    assert rows["negate"]["passes"] == ["negate"]
    assert "(wc-extra)" in rows["negate"]["source"]
    assert "strip" in rows


def test_broken_plugin_is_reported_not_fatal(tmp_path):
    env = install_fake_plugin(tmp_path, "wc_broken", "broken", "raise ImportError('missing dependency xyz')\n")
    done = subprocess.run([sys.executable, "-m", "wcompress.cli", "plugins", "--json"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0
    assert "plugin 'broken' (wc_broken) failed to load: missing dependency xyz" in done.stderr
    import json

    rows = {r["plugin"]: r for r in json.loads(done.stdout)}
    assert rows["broken"]["source"] == "failed to load" and "strip" in rows
