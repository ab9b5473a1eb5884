"""The Python examples in the README and docs/api.md run as written (in a scratch folder)."""

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks(path):
    with open(path) as fh:
        return re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)


@pytest.mark.parametrize("number, code", list(enumerate(_python_blocks(os.path.join(REPO, "README.md")))))
def test_readme_python_example_runs(number, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md example {number + 1}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()


def test_api_page_runs_as_one_script(tmp_path, monkeypatch, capsys):
    """docs/api.md: each block continues from the ones before it."""
    monkeypatch.chdir(tmp_path)
    code = "\n".join(_python_blocks(os.path.join(REPO, "docs", "api.md")))
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "__api_md__"})
    printed = capsys.readouterr().out
    assert "refused:" in printed and "calibrating on the calibration data" in printed
