"""Every code block of docs/equinox.md runs as written (in order, as one script)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "equinox.md"


def blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_equinox_page_runs(capsys):
  code = blocks(DOC.read_text())
  assert len(code) >= 5
  namespace: dict = {"__name__": "docs_equinox"}
  for block in code:
    exec(compile(block, str(DOC), "exec"), namespace)
  printed = capsys.readouterr().out
  assert "Param" in printed and "('layers', 0, 'weight')" in printed
