"""The Python examples in the README run as written (in a scratch folder)."""

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
