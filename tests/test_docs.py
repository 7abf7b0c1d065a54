"""Every python code block of every docs page runs (so no page can rot).

Blocks on one page share a namespace and run in order, like a notebook. A block opts out only
with an explicit marker on the line right before its fence, which must give a reason:

    <!-- docs-test: skip (needs several hosts) -->
    ```python
    jax.distributed.initialize()
    ```

The only legitimate reason is code that cannot run in one test process (multi-host set-up).

A ``try:`` in a docs example shows an error, so one of its ``except`` branches must run: an
example whose error is no longer raised fails instead of passing silently.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import textwrap

import jax
import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
# A fence may be indented (inside content tabs or admonitions); its body is dedented.
FENCE = re.compile(
  r"^(?P<indent>[ \t]*)```(?P<lang>\S*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->\s*$")
ANY_MARKER = re.compile(r"<!--\s*docs-test")


@dataclasses.dataclass(frozen=True)
class Block:
  page: pathlib.Path
  line: int  # 1-based line of the opening fence
  code: str
  skip_reason: str | None


def blocks(page: pathlib.Path) -> list[Block]:
  """The python blocks of a page in order, with the skip reason of those that opt out."""
  text = page.read_text()
  out = []
  for match in FENCE.finditer(text):
    if match.group("lang") not in ("python", "py"):
      continue
    line = text.count("\n", 0, match.start()) + 1
    before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
    skip = SKIP.search(before)
    if ANY_MARKER.search(before) and not skip:
      raise ValueError(f"{page.name}:{line}: malformed docs-test marker {before!r}")
    reason = skip.group("reason").strip() if skip else None
    if skip and not reason:
      raise ValueError(f"{page.name}:{line}: a docs-test skip marker needs a reason")
    out.append(Block(page, line, textwrap.dedent(match.group("body")), reason))
  return out


PAGES = sorted(DOCS.glob("*.md"))


def test_block_parser_reads_fences_and_markers(tmp_path):
  page = tmp_path / "p.md"
  page.write_text(
    "text\n```python\na = 1\n```\n\n```bash\nls\n```\n"
    "<!-- docs-test: skip (multi-host only) -->\n```python\nraise SystemExit\n```\n"
    '=== "Tab"\n\n    ```python\n    if b:\n      c = 2\n    ```\n'
  )
  found = blocks(page)
  assert [b.code for b in found] == ["a = 1\n", "raise SystemExit\n", "if b:\n  c = 2\n"]
  assert [b.skip_reason for b in found] == [None, "multi-host only", None]
  assert [b.line for b in found] == [2, 10, 15]


def test_skip_marker_without_reason_is_rejected(tmp_path):
  page = tmp_path / "p.md"
  page.write_text("<!-- docs-test: skip () -->\n```python\nx\n```\n")
  with pytest.raises(ValueError, match="needs a reason"):
    blocks(page)
  page.write_text("<!-- docs-test: skp -->\n```python\nx\n```\n")
  with pytest.raises(ValueError, match="malformed"):
    blocks(page)


def test_pages_have_code_and_few_skips():
  runnable = {p.name: [b for b in blocks(p) if b.skip_reason is None] for p in PAGES}
  assert sum(len(v) for v in runnable.values()) > 40
  skipped = [b for p in PAGES for b in blocks(p) if b.skip_reason is not None]
  assert len(skipped) <= 3, [(b.page.name, b.line, b.skip_reason) for b in skipped]


class _MarkHandlers(ast.NodeTransformer):
  """Records, per ``try:`` (by line), that one of its ``except`` branches ran."""

  def __init__(self) -> None:
    self.tries: list[int] = []

  def visit_Try(self, node: ast.Try) -> ast.Try:
    self.generic_visit(node)
    self.tries.append(node.lineno)
    for handler in node.handlers:
      mark = ast.parse(f"__docs_excepted__.add({node.lineno})").body[0]
      handler.body.insert(0, ast.copy_location(mark, handler.body[0]))
    return node


def run_page(page: pathlib.Path) -> None:
  namespace: dict = {"__name__": f"docs_{page.stem}", "__docs_excepted__": set()}
  tries: list[int] = []
  # Users run with JAX's default (standard) dtype promotion; optax mixes Python floats with
  # int32 step counts, which the suite's strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    for block in blocks(page):
      if block.skip_reason is not None:
        continue
      # Pad with newlines so tracebacks point at the page's own line numbers.
      tree = ast.parse("\n" * block.line + block.code)
      marker = _MarkHandlers()
      tree = ast.fix_missing_locations(marker.visit(tree))
      tries += marker.tries
      # dont_inherit: the page runs as users run it, not under this file's __future__ imports.
      exec(compile(tree, str(page), "exec", dont_inherit=True), namespace)
  silent = sorted(set(tries) - namespace["__docs_excepted__"])
  assert not silent, f"{page.name}: the try: at line(s) {silent} raised nothing"


def test_a_try_whose_error_is_not_raised_fails(tmp_path):
  page = tmp_path / "p.md"
  page.write_text("```python\ntry:\n  x = 1\nexcept ValueError:\n  pass\n```\n")
  with pytest.raises(AssertionError, match=r"try: at line\(s\) \[2\] raised nothing"):
    run_page(page)
  page.write_text("```python\ntry:\n  int('x')\nexcept ValueError:\n  pass\n```\n")
  run_page(page)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # pages may write files (checkpoints, plots)
  run_page(page)
