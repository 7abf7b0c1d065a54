"""The layering rule of DESIGN.md, checked on the source with ``ast``.

errors/config -> paths/filters -> variables -> pytree/module/state/tree/rngs -> _graph ->
_functional -> _transforms -> nn -> training/bridge -> __init__: a module may import its own
tier or a lower one, never a higher one. Nothing imports ``jax._src``. ``pynnx/_core`` and
``pynnx/_graph`` have no function-level imports except of optional dependencies.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "pynnx"

# Lower number = lower tier. A module may import modules of its own tier or below.
CORE_TIERS = {
  "errors": 0,
  "config": 0,
  "paths": 1,
  "filters": 1,
  "reprs": 1,  # reprs: text layout helpers, imports no pynnx code
  "statics": 1,  # hashable stand-ins for static values; imports no pynnx code
  "variables": 2,
  "pytree": 3,
  "module": 3,
  "state": 3,
  "tree": 3,
  "rngs": 3,
  "sharding": 3,
  "eager": 1,
  "varhooks": 1,
  "varapi": 1,  # the Variable metadata methods (a base class of Variable)
  "varmeta": 1,  # Variable metadata aux form / creation defaults
  "varnames": 1,  # collection name registry
  "varops": 1,  # Variable operators
  "varvalue": 1,  # indexed reads / writes of a Variable's value
  "__init__": 3,
}
PACKAGE_TIERS = {"_graph": 4, "_transforms": 6, "nn": 7, "training": 8, "bridge": 8}
MODULE_TIERS = {
  "_functional": 5,
  "_graph_utils": 5,
  "_update_context": 5,
  "_recursive_map": 5,
  "_rng_helpers": 5,
  "compat": 9,
  "_submodules": 9,
  "traversals": 1,
  "checkpoint": 9,
  "typing": 3,
  "__init__": 9,
}
PUBLIC_API_TIER = 7  # nn, training and bridge are written on the public API (`import pynnx`)

OPTIONAL_DEPENDENCIES = {
  "equinox",
  "optax",
  "orbax",
  "flax",
  "jaxtyping",
  "beartype",
  "treescope",
  "matplotlib",
  "sklearn",
  "tqdm",
  "IPython",
  "penzai",
}


def module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT.parent).with_suffix("")
  return ".".join(rel.parts)


def tier(name: str) -> int | None:
  parts = name.split(".")
  if parts[0] != "pynnx":
    return None
  if len(parts) == 1:
    return MODULE_TIERS["__init__"]
  if parts[1] == "_core":
    return CORE_TIERS.get(parts[2] if len(parts) > 2 else "__init__")
  if parts[1] in PACKAGE_TIERS:
    return PACKAGE_TIERS[parts[1]]
  return MODULE_TIERS.get(parts[1])


def sources():
  return sorted(ROOT.rglob("*.py"))


def resolve(path: pathlib.Path, node: ast.ImportFrom) -> list[str]:
  """The modules an ``ImportFrom`` reads (``from ._core import tree`` reads pynnx._core.tree)."""
  if node.level == 0:
    base = node.module or ""
  else:
    package = module_name(path).split(".")[:-1]  # drops the module (or "__init__")
    package = package[: len(package) - (node.level - 1)]
    base = ".".join(package + ([node.module] if node.module else []))
  out = []
  for alias in node.names:
    candidate = f"{base}.{alias.name}"
    as_path = ROOT.parent.joinpath(*candidate.split("."))
    if as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists():
      out.append(candidate)
    else:
      out.append(base)
  return out


def type_checking_nodes(tree: ast.AST) -> set[int]:
  skip = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      skip |= {id(n) for n in ast.walk(node)}
  return skip


def imports(path: pathlib.Path, source: str | None = None):
  """``(lineno, imported module, function-level?)`` for every import in ``path``."""
  source = path.read_text() if source is None else source
  tree = ast.parse(source, filename=str(path))
  skip = type_checking_nodes(tree)
  nested: set[int] = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      nested |= {id(n) for n in ast.walk(node) if n is not node}
  for node in ast.walk(tree):
    if id(node) in skip:
      continue
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name, id(node) in nested
    elif isinstance(node, ast.ImportFrom):
      for name in resolve(path, node):
        yield node.lineno, name, id(node) in nested


def test_sources_found():
  names = {module_name(p) for p in sources()}
  assert {"pynnx._core.variables", "pynnx._core.tree", "pynnx._functional"} <= names


def test_every_module_has_a_tier():
  assert [module_name(p) for p in sources() if tier(module_name(p)) is None] == []


def test_imports_point_downward():
  violations = []
  for path in sources():
    me = module_name(path)
    my_tier = tier(me)
    for lineno, name, _ in imports(path):
      other = tier(name)
      if other is None or other <= my_tier:
        continue
      if name == "pynnx" and my_tier >= PUBLIC_API_TIER:
        continue  # layers use the public API; the package imports them last
      violations.append(
        f"{path.relative_to(ROOT.parent)}:{lineno} ({me}, tier {my_tier}) "
        f"imports {name} (tier {other})"
      )
  assert violations == []


# The one sanctioned use of jax._src (DESIGN.md): joining JAX's traceback filter.
JAX_PRIVATE_ALLOWED = {"pynnx/_transforms/tracebacks.py"}


def test_no_jax_private_imports():
  violations = []
  for path in sources():
    if str(path.relative_to(ROOT.parent)) in JAX_PRIVATE_ALLOWED:
      continue
    text = path.read_text()
    tree = ast.parse(text)
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
      if any(n == "jax._src" or n.startswith("jax._src.") for n in names):
        violations.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    if "jax._src" in text.replace("# jax._src", ""):
      if not any(str(path.relative_to(ROOT.parent)) in v for v in violations):
        # e.g. getattr(jax, "_src") or jax._src.core in code
        violations.append(f"{path.relative_to(ROOT.parent)}: mentions jax._src")
  assert violations == []


@pytest.mark.parametrize("package", ["_core", "_graph"])
def test_no_function_level_imports(package):
  violations = []
  for path in sorted((ROOT / package).rglob("*.py")):
    for lineno, name, nested in imports(path):
      if nested and name.split(".")[0] not in OPTIONAL_DEPENDENCIES:
        violations.append(f"{path.relative_to(ROOT.parent)}:{lineno} imports {name}")
  assert violations == []


def test_checker_catches_violations():
  """The checker itself: an upward import and a function-level import are both found."""
  path = ROOT / "_core" / "variables.py"
  source = "from .tree import split\n\ndef f():\n  import numpy\n  import equinox\n"
  found = list(imports(path, source))
  assert (1, "pynnx._core.tree", False) in found
  assert (4, "numpy", True) in found and (5, "equinox", True) in found
  assert tier("pynnx._core.tree") > tier("pynnx._core.variables")
  pkg = list(imports(ROOT / "training" / "__init__.py", "from .. import _functional\n"))
  assert pkg == [(1, "pynnx._functional", False)]
