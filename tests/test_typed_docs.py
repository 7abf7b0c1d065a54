"""Every code block of docs/typed.md runs as written (in order, as one script)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "typed.md"


def test_typed_page_runs(capsys):
  code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
  assert len(code) >= 5
  namespace: dict = {"__name__": "docs_typed"}
  for block in code:
    exec(compile(block, str(DOC), "exec"), namespace)
  printed = capsys.readouterr().out
  # The messages the page quotes are the ones raised.
  assert "dimension 'dout' is 4 here but 3 in Affine.kernel." in printed
  assert "dimension 'din' is 5 here but 2 in Affine.__call__(self).kernel." in printed
  assert "caught at trace time" in printed
