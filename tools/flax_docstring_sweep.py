"""Runs the ``>>>`` examples of Flax NNX's docstrings on flax.nnx and on pynnx, and compares.

Developer tool (not part of the package). The docstrings are read from the installed Flax at
run time; nothing of them is stored in this repository.

Each docstring with examples is one *case*. A case runs twice in a fresh namespace in a worker
process: once as written (``nnx`` is ``flax.nnx``) and once with ``nnx`` bound to ``pynnx``
(``flax.nnx`` imports in the source rewritten to ``pynnx``). Per step it records whether the
step raised (and the exception class) and what it printed (expression values are printed the
way doctest does). A hung case is killed after ``--timeout`` seconds and the worker restarted.

Usage (from the repository root)::

  python tools/flax_docstring_sweep.py --out /tmp/sweep.txt
  python tools/flax_docstring_sweep.py --only Module.sow --out /tmp/one.txt -v
"""

from __future__ import annotations

import os

# 8 virtual CPU devices (sharding examples), set before jax is imported here or in the worker
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import doctest  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# public submodules whose own public names (Flax's or JAX's, not numpy's) are swept too
SUBMODULES = ("bridge", "metrics", "traversals", "initializers")
LIBS = ("flax", "pynnx")
CATEGORIES = ("pass on both", "differs", "fails only on pynnx", "fails only on flax")
CATEGORIES += ("fails on both", "timeout")


# ----------------------------------------------------------------------------- collection


def collect():
  """``[(qualname, docstring)]`` for every public flax.nnx name and public class method."""
  from flax import nnx

  roots = [("", nnx)] + [(m + ".", getattr(nnx, m)) for m in SUBMODULES]
  seen, cases = set(), []

  def add(qualname, obj):
    obj = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    obj = obj.fget if isinstance(obj, property) else obj
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or ">>>" not in doc or doc in seen:
      return
    seen.add(doc)
    cases.append((qualname, doc))

  for prefix, mod in roots:
    for name in sorted(dir(mod)):
      obj = getattr(mod, name)
      if name.startswith("_") or isinstance(obj, types.ModuleType):
        continue
      if prefix and not getattr(obj, "__module__", "").startswith(("flax", "jax")):
        continue
      add(prefix + name, obj)
      if inspect.isclass(obj):
        for attr, member in obj.__dict__.items():
          if attr.startswith("_") and attr not in ("__init__", "__call__"):
            continue
          add(f"{prefix}{name}.{attr}", member)
  return cases


# ----------------------------------------------------------------------------- worker

REWRITES = (
  (re.compile(r"^(\s*)from\s+flax\s+import\s+nnx\b", re.M), r"\1import pynnx as nnx"),
  (re.compile(r"^(\s*)import\s+flax\.nnx\s+as\s+", re.M), r"\1import pynnx as "),
  (re.compile(r"\bflax\.nnx\b"), "pynnx"),
)


def to_pynnx(source):
  for pattern, repl in REWRITES:
    source = pattern.sub(repl, source)
  return source


def run_case(doc, lib, star=False):
  """Runs the examples of ``doc`` with ``nnx`` = ``lib`` ('flax' or 'pynnx'): the steps, and
  the fingerprints of the values the example left in its namespace."""
  if lib == "flax":
    from flax import nnx
  else:
    import pynnx as nnx
  ns = {"nnx": nnx, "jax": jax, "jnp": jnp, "np": np, "optax": optax, "__name__": "__main__"}
  if star:  # `from nnx import *`: some docstrings use bare names (RNN, Variable, ...)
    ns.update({k: getattr(nnx, k) for k in dir(nnx) if not k.startswith("_")})
  preset = set(ns) | {"__builtins__"}
  steps, checker = [], doctest.OutputChecker()
  base_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE  # Flax's pytest doctest flags
  for ex in doctest.DocTestParser().get_examples(doc):
    if ex.options.get(doctest.SKIP):
      continue
    source = ex.source if lib == "flax" else to_pynnx(ex.source)
    buf, err, exc_line = io.StringIO(), None, ""
    try:
      with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(source, "<example>", "single"), ns)
    except BaseException as e:  # noqa: BLE001 - a step may raise anything, even SystemExit
      if isinstance(e, KeyboardInterrupt):
        raise
      notes = e.__dict__.pop("__notes__", None)  # JAX adds a note; doctest compares the message
      exc_line = traceback.format_exception_only(type(e), e)[-1]
      if notes is not None:
        e.__notes__ = notes
      err = [type(e).__name__, exc_line.strip()[:500]]
    flags = base_flags
    for flag, on in ex.options.items():
      flags = flags | flag if on else flags & ~flag
    if ex.exc_msg is None:
      ok = err is None and checker.check_output(ex.want, buf.getvalue(), flags)
    else:  # doctest compares the last traceback line (the exception) with the expected one
      ok = err is not None and checker.check_output(ex.exc_msg, exc_line, flags)
    out = buf.getvalue().rstrip()[:4000]
    steps.append(dict(src=ex.source.rstrip(), want=ex.want.rstrip(), out=out, err=err))
    steps[-1].update(expects_error=ex.exc_msg is not None, doctest_ok=bool(ok))
  final = {k: fingerprint(v) for k, v in ns.items() if k not in preset and not k.startswith("_")}
  return steps, {k: v for k, v in final.items() if v}


def has_cycle(value, path=None, depth=0):
  """Whether ``value`` reaches itself through attributes, list/tuple items or dict values."""
  path = set() if path is None else path
  if id(value) in path:
    return True
  if depth > 60 or isinstance(value, (str, bytes, int, float, complex, type(None))):
    return False
  if isinstance(value, (dict, list, tuple)):
    children = list(value.values() if isinstance(value, dict) else value)
  elif hasattr(value, "__dict__") and not isinstance(value, type):  # public attributes only
    children = [v for k, v in vars(value).items() if not str(k).startswith("_")]
  else:
    return False
  path.add(id(value))
  try:
    return any(has_cycle(c, path, depth + 1) for c in children)
  finally:
    path.discard(id(value))


def fingerprint(value):
  """Sorted ``[shape, dtype, sum, sum of squares]`` of the array leaves of ``value`` (a Module,
  State, array, ...), so values the example computed but never printed are compared too."""
  if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
    return None
  if type(value).__module__.startswith("jax._src.checkify"):  # error codes are process-global
    return None
  if has_cycle(value):  # flattening a cyclic graph recurses without end (and upsets CPython)
    return None
  try:
    leaves = jax.tree.leaves(value)[:200]
  except Exception:  # noqa: BLE001 - anything jax cannot flatten is not compared
    return None
  out = []
  for leaf in leaves:
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      continue
    try:
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      a = np.asarray(leaf, dtype=np.float64)
      sums = [float(np.nansum(a)), float(np.nansum(a * a))]
    except Exception:  # noqa: BLE001 - abstract or traced leaves: shape and dtype only
      sums = []
    out.append([list(leaf.shape), str(leaf.dtype), *sums])
  return sorted(out, key=repr)


def worker():
  """Reads one JSON task per line on stdin, writes one JSON result per line on fd 3 (stdout is
  left for the examples' own prints, which are captured anyway)."""
  sys.path.insert(0, ROOT)
  from flax import nnx  # noqa: F401 - imported once, before any case

  import pynnx  # noqa: F401

  out = os.fdopen(int(os.environ["SWEEP_RESULT_FD"]), "w")
  out.write("ready\n")  # the per-case timeout starts after these imports
  out.flush()
  for line in sys.stdin:
    task = json.loads(line)
    t0 = time.time()
    result = {}
    for lib in LIBS:
      try:
        result[lib], result[lib + "_final"] = run_case(task["doc"], lib, task["star"])
      except Exception as e:  # noqa: BLE001 - a bug of this tool, reported as a failed step
        err = [type(e).__name__, f"sweep tool error: {e}"[:500]]
        step = {"src": "", "want": "", "expects_error": False, "out": "", "doctest_ok": False}
        result[lib], result[lib + "_final"] = [{**step, "err": err}], {}
    result["seconds"] = round(time.time() - t0, 1)
    out.write(json.dumps(result) + "\n")
    out.flush()


class Worker:
  def __init__(self):
    env = dict(os.environ)  # XLA_FLAGS set at the top of this file
    self.log = os.path.join(tempfile.gettempdir(), "flax_docstring_sweep_worker.log")
    read_fd, write_fd = os.pipe()
    env["SWEEP_RESULT_FD"] = str(write_fd)
    cmd, log = [sys.executable, os.path.abspath(__file__), "--worker"], open(self.log, "w")
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, text=True)
    self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, pass_fds=(write_fd,), **pipes)
    os.close(write_fd)
    self.results = os.fdopen(read_fd, "r")
    self.sel = selectors.DefaultSelector()
    self.sel.register(self.results, selectors.EVENT_READ)
    if not (self.sel.select(600) and self.results.readline() == "ready\n"):
      raise RuntimeError(f"the sweep worker did not start; see {self.log}")

  def run(self, doc, timeout, star=False):
    self.proc.stdin.write(json.dumps({"doc": doc, "star": star}) + "\n")
    self.proc.stdin.flush()
    if not self.sel.select(timeout):
      return None
    line = self.results.readline()
    if not line:
      raise RuntimeError(f"sweep worker exited with code {self.proc.wait()}; see {self.log}")
    return json.loads(line)

  def close(self):  # -> None
    self.proc.kill()
    self.proc.wait()
    self.results.close()


# ----------------------------------------------------------------------------- comparison

NUM = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def normalise(text):
  # a qualified name keeps its last part: flax.nnx.variablelib.X and pynnx._core.eager.X -> nnx.X
  text = re.sub(r"\b(?:flax\.nnx|pynnx)(?:\.\w+)*\.(?=\w+\b)", "nnx.", text)
  text = re.sub(r"\b0x[0-9a-f]+\b", "0x?", text)
  text = re.sub(r"\s+", " ", text).strip()
  return text


def close(xs, ys, rtol=1e-4, atol=1e-5):
  return all(abs(float(x) - float(y)) <= atol + rtol * abs(float(x)) for x, y in zip(xs, ys))


def same_output(a, b):
  """Equal after normalising, numbers compared with a tolerance."""
  a, b = normalise(a), normalise(b)
  return a == b or (NUM.sub("#", a) == NUM.sub("#", b) and close(NUM.findall(a), NUM.findall(b)))


def same_final(a, b):
  if a is None or b is None or len(a) != len(b):
    return a is None and b is None
  return all(x[:2] == y[:2] and len(x) == len(y) and close(x[2:], y[2:]) for x, y in zip(a, b))


def classify(result):
  """Category and the first differing step (index, reason) of one case."""
  f, p = result["flax"], result["pynnx"]
  f_bad = [i for i, s in enumerate(f) if s["err"] and not s["expects_error"]]
  p_bad = [i for i, s in enumerate(p) if s["err"] and not s["expects_error"]]
  for i, (fs, ps) in enumerate(zip(f, p)):
    fe, pe = fs["err"] and fs["err"][0], ps["err"] and ps["err"][0]
    if fe == pe:
      continue
    if pe and not fe:
      who = "fails only on pynnx"
    elif fe and not pe and not fs["expects_error"]:
      who = "fails only on flax"
    else:  # both raised with different classes, or pynnx misses an error Flax documents
      who = "differs"
    return who, i, f"error class: flax={fe} pynnx={pe}"
  if f_bad and p_bad:  # the same steps fail with the same classes (often a docstring bug)
    return "fails on both", f_bad[0], "flax: " + f[f_bad[0]]["err"][1]
  for i, (fs, ps) in enumerate(zip(f, p)):
    if not same_output(fs["out"], ps["out"]):
      return "differs", i, "output differs"
  ff, pf = result["flax_final"], result["pynnx_final"]
  for name in sorted(set(ff) | set(pf)):
    if not same_final(ff.get(name), pf.get(name)):
      why = f"final value of `{name}` differs: flax {ff.get(name)} pynnx {pf.get(name)}"
      return "differs", None, why[:600]
  return "pass on both", None, ""


def describe(name, result, category, step, reason):
  lines = [f"=== {name}: {category}" + (f" (step {step}: {reason})" if reason else "")]
  if result is None:
    return lines + ["  (killed after the timeout)"]
  for i, (fs, ps) in enumerate(zip(result["flax"], result["pynnx"])):
    mark = ">>" if i == step else "  "
    lines.append(f"{mark} [{i}] " + fs["src"].replace("\n", "\n       "))
    for lib, s in (("flax", fs), ("pynnx", ps)):
      if not s["doctest_ok"] and fs["doctest_ok"]:
        lines.append(f"     {lib:5} does not match the docstring's expected output")
      if s["err"]:
        lines.append(f"     {lib:5} raised {s['err'][1]}")
      elif s["out"] and (i == step or lib == "flax" or not same_output(fs["out"], s["out"])):
        lines.append(f"     {lib:5} -> " + s["out"][:1500].replace("\n", "\n              "))
  return lines


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="", help="file for the per-case details")
  ap.add_argument("--timeout", type=float, default=180.0, help="seconds per case (both runs)")
  ap.add_argument("--only", default="", help="comma-separated name prefixes to run")
  ap.add_argument("--json", default="", help="also write raw results as JSON here")
  ap.add_argument("--star-import", action="store_true", help="bind public nnx names bare too")
  ap.add_argument("-v", "--verbose", action="store_true", help="print each case as it runs")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    return worker()
  if not args.out:
    ap.error("--out is required")
  cases = collect()
  if args.only:
    prefixes = tuple(p.strip() for p in args.only.split(",") if p.strip())
    cases = [c for c in cases if c[0].startswith(prefixes)]
  counts, details, raw, w, t0 = dict.fromkeys(CATEGORIES, 0), [], {}, None, time.time()
  for name, doc in cases:
    w = w or Worker()
    result = w.run(doc, args.timeout, args.star_import)
    if result is None:
      w = w.close()
      category, step, reason = "timeout", None, f"> {args.timeout:.0f}s"
    else:
      category, step, reason = classify(result)
    counts[category] += 1
    ok = {lib: bool(result) and all(s["doctest_ok"] for s in result[lib]) for lib in LIBS}
    raw[name] = dict(category=category, step=step, reason=reason, result=result, doctest_ok=ok)
    if args.verbose:
      secs = result["seconds"] if result else "-"
      print(f"{category:20} {secs:>6}s  {name}  {reason}", flush=True)
    if category != "pass on both" or (ok["flax"] and not ok["pynnx"]):
      details += describe(name, result, category, step, reason) + [""]
  if w is not None:
    w.close()

  total = len(cases)
  wants = {lib: sum(r["doctest_ok"][lib] for r in raw.values()) for lib in LIBS}
  wants["both"] = sum(all(r["doctest_ok"].values()) for r in raw.values())
  table = [f"{'category':22} {'cases':>6}", "-" * 29]
  table += [f"{c:22} {counts[c]:>6}" for c in CATEGORIES]
  table += ["-" * 29, f"{'total':22} {total:>6}", f"({time.time() - t0:.0f}s)", ""]
  table += [
    "doctest (output matches the docstring, ELLIPSIS + NORMALIZE_WHITESPACE):",
    f"  flax {wants['flax']}, pynnx {wants['pynnx']}, both {wants['both']} of {total}",
  ]
  only_flax = sorted(n for n, r in raw.items() if r["doctest_ok"] == {"flax": True, "pynnx": False})
  print("\n".join(table))
  by_cat = {c: sorted(n for n, r in raw.items() if r["category"] == c) for c in CATEGORIES}
  with open(args.out, "w") as fh:
    fh.write("\n".join(table) + "\n\n")
    for c in CATEGORIES[1:]:
      fh.write(f"{c}: {', '.join(by_cat[c]) or '-'}\n")
    fh.write(f"doctest passes on flax only: {', '.join(only_flax) or '-'}\n")
    fh.write("\n" + "\n".join(details) + "\n")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(raw, fh, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
