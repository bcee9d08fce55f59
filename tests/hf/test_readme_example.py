"""The README's "Hugging Face models" example runs as written (offline, tiny config)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_hugging_face_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Hugging Face models"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(code, "README.md:Hugging Face models", "exec"), {})  # its asserts compare reloaded outputs
    printed = capsys.readouterr().out
    assert "(True, [])" in printed and "differs between layers" in printed
    assert (tmp_path / "pruned-llama" / "config.json").exists()
    assert (tmp_path / "pruned-llama-free" / "prunekit.json").exists()
    assert (tmp_path / "pruned-llama-shallow" / "config.json").exists() and "\n1\n" in printed
