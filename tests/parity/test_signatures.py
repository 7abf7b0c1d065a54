"""Signature walk: every public name and parameter of ``flax.nnx`` exists in pynnx.

A gap is allowed only if ``docs/migrating.md`` lists it in its "Deliberate differences" table
(columns ``name`` and ``parameter``; the single source of truth), or if it is in ``PENDING``
below (work owned by another workstream, emptied by the lead at merge).
"""

import inspect
import pathlib
import types

import pytest

import pynnx

nnx_flax = pytest.importorskip("flax.nnx")

MIGRATING = pathlib.Path(__file__).resolve().parents[2] / "docs" / "migrating.md"
P = inspect.Parameter

# Gaps owned by work in progress (empty once every workstream has landed).
PENDING: set[tuple[str, str | None]] = set()

# Classes whose public methods (and their parameters) are walked too, as "Class.method".
METHOD_CLASSES = (
  "Variable",
  "VariableMetadata",
  "State",
  "FlatState",
  "GraphDef",
  "List",
  "Dict",
  "Module",
  "use_eager_sharding",
  "StateAxes",
  "StateSharding",
  "DiffState",
)


def documented_differences() -> set[tuple[str, str | None]]:
  """``(name, parameter or None)`` rows of the tables with ``name`` and ``parameter`` columns
  (the "Deliberate differences" table; the per-topic tables describe behaviour, not gaps)."""
  rows: set[tuple[str, str | None]] = set()
  header: list[str] | None = None
  for line in MIGRATING.read_text().splitlines():
    if not line.startswith("|"):
      header = None
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if header is None:
      header = [c.lower() for c in cells]
      continue
    if set("".join(cells)) <= set("-: "):
      continue  # the separator row
    if "name" in header and "parameter" in header:
      entry = dict(zip(header, cells))
      rows.add((entry["name"], entry.get("parameter") or None))
  return rows


def signature_or_none(obj):
  try:
    return inspect.signature(obj)
  except (TypeError, ValueError):
    return None


def public_names() -> list[tuple[str, object, object]]:
  """``(name, flax object, pynnx object or None)``: top-level names, then the methods of
  :data:`METHOD_CLASSES` as ``Class.method``."""
  out = []
  for name in sorted(n for n in dir(nnx_flax) if not n.startswith("_")):
    out.append((name, getattr(nnx_flax, name), getattr(pynnx, name, None)))
  for cls_name in METHOD_CLASSES:
    ref_cls, our_cls = getattr(nnx_flax, cls_name), getattr(pynnx, cls_name)
    for attr in sorted(a for a in dir(ref_cls) if not a.startswith("_")):
      out.append((f"{cls_name}.{attr}", getattr(ref_cls, attr), getattr(our_cls, attr, None)))
  return out


def gaps() -> set[tuple[str, str | None]]:
  """Every ``flax.nnx`` public name (or method) pynnx lacks, and every parameter it lacks."""
  out: set[tuple[str, str | None]] = set()
  for name, ref, ours in public_names():
    if ours is None:
      out.add((name, None))
      continue
    if isinstance(ref, types.ModuleType) or not callable(ref):
      continue
    ref_sig = signature_or_none(ref)
    if ref_sig is None:
      continue
    our_sig = signature_or_none(ours)
    our_params = {} if our_sig is None else our_sig.parameters
    our_kinds = {p.kind for p in our_params.values()}
    for param in ref_sig.parameters.values():
      if param.kind in (P.POSITIONAL_ONLY, P.VAR_POSITIONAL) or param.name.startswith("_"):
        continue  # names callers cannot use
      if param.kind is P.VAR_KEYWORD:
        if P.VAR_KEYWORD not in our_kinds:
          out.add((name, f"**{param.name}"))
      elif param.name not in our_params:
        out.add((name, param.name))
  return out


def test_migrating_table_is_parsed():
  rows = documented_differences()
  assert ("NodeStates", None) in rows and ("flatten", "ref_index") in rows


def test_every_flax_name_and_parameter_exists_or_is_documented():
  missing = gaps() - documented_differences() - PENDING
  assert not missing, "pynnx lacks (add it, or document it in docs/migrating.md):\n" + "\n".join(
    f"  {n}" + (f"({p}=...)" if p else "") for n, p in sorted(missing, key=str)
  )


def test_documented_entries_are_real_gaps():
  # A row for something pynnx now has is stale: remove it so the docs stay true. (PENDING is
  # not checked: other workstreams fill those gaps and the lead empties it at merge.)
  stale = documented_differences() - gaps()
  assert not stale, f"no longer gaps, remove them: {sorted(stale, key=str)}"


def test_the_walk_covers_methods(monkeypatch):
  monkeypatch.delattr(pynnx.FlatState, "merge")
  assert ("FlatState.merge", None) in gaps()


def test_the_walk_finds_a_missing_parameter(monkeypatch):
  def split(node, *filters):  # no graph= parameter
    return node

  monkeypatch.setattr(pynnx, "split", split)
  assert ("split", "graph") in gaps()
