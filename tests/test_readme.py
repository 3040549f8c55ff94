"""The README's Python API example runs as written (on the tiny model instead of smollm2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def test_readme_api_example_runs(tiny_dir, tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example:start -->\s*```python\n(.*?)```\s*<!-- api-example:end -->", text, re.S)
    assert block, "README lost its API example markers"
    code = block.group(1).replace('"smollm2"', repr(str(tiny_dir)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert (tmp_path / "out" / "study" / "report.html").is_file()
    assert (tmp_path / "deception.gguf").is_file()
    assert "random" in capsys.readouterr().out  # the verdict sentence of a study row
