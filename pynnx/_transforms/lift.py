"""The one lift every pynnx transform runs (the pipeline is described in README.md).

    caller's args ──bind──▶ dynamic slots (positional + keyword) and static values
                  ──graph hook (graph mode only): to_tree──▶ GraphNode-wrapped slots
                  ──flatten──▶ Flat(plans, values, cells)   + sharing check over all slots
                        │
           jax.<transform>(inner, values...)      static: hashable CallStatic
                        │
           inner: Inner(static, values) ─▶ fresh Variables in a new Frame, graph enter,
                  out = f(*args, **kwargs), graph finish, returned inputs marked,
                  updates = changed cells (or every cell)
                        ▼
    write_back(flat, updates) ─▶ graph exit ─▶ returned inputs resolved to the caller's objects

Flattening, the rebuild inside and the write-back are in ``flat.py``; the graph hooks in
``graph_adapter.py``; what happens to returned objects in ``outputs.py``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax

from .._core.config import GRAPH_MODE, UNSET
from .._core.errors import (
  BoundMethodError,
  ConfigError,
  GraphModeRequiredError,
  TransformArgumentError,
  TreeStructureError,
)
from .._core.pytree import BUILD, Pytree
from .._core.tree import (
  check_no_sharing,
  check_tree_depth,
  flatten_with_paths,
)
from .._core.variables import (
  STRUCTURE,
  Param,
  Variable,
  pop_frame,
  push_frame,
)
from . import graph_adapter
from .flat import Flat, SharingCheck, changed, flatten_args, rebuild_arg, write_back
from .outputs import (
  check_output_unique,
  check_tree_structure,
  mark_inputs,
  object_table,
  resolve_inputs,
)
from .tracebacks import api_boundary, hide_frames

hide_frames(__file__)
_GRAPH_LOCAL = GRAPH_MODE.local

# --- the call ---------------------------------------------------------------------------------


def _is_param(cell: Any) -> bool:
  return isinstance(cell, Param)


def _is_unit(x: Any) -> bool:
  return isinstance(x, (Variable, Pytree))


def _same(tree: Any) -> Any:
  return tree


class CallStatic:
  """The hashable half of one call: what the inner function needs besides the values.

  ``layout[s]`` says where dynamic slot ``s`` goes: an int (a positional argument) or a
  str (a keyword); ``static_pos`` / ``static_kw`` are the static arguments re-inserted
  inside; ``graph`` is the graph-mode key (None in tree mode).
  """

  __slots__ = (
    "plans",
    "layout",
    "n_pos",
    "static_pos",
    "static_kw",
    "graph",
    "memo",
    "_key",
    "_hash",
  )

  def __init__(self, plans, layout, n_pos, static_pos=(), static_kw=(), graph=None):
    self.plans, self.layout, self.n_pos, self.graph = plans, layout, n_pos, graph
    self.static_pos, self.static_kw = static_pos, static_kw
    self.memo: dict = {}  # what a transform derives from this call structure (specs, jitted)
    self._key = (plans, layout, n_pos, static_pos, static_kw, graph)
    try:
      self._hash = hash(self._key)
    except TypeError:
      bad = [f"argument {k}: {type(v).__name__}" for k, v in (*static_pos, *static_kw)]
      raise TransformArgumentError(
        f"Static arguments must be hashable (they are part of the compile cache key), got "
        f"{', '.join(bad)}. Pass arrays as traced arguments (drop them from static_argnums / "
        f"static_argnames) or pass a hashable value (a tuple instead of a list)."
      ) from None

  def replace_plans(self, plans: tuple) -> CallStatic:
    return CallStatic(plans, *self._key[1:])

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return self is other or (isinstance(other, CallStatic) and self._key == other._key)

  def assemble(self, dyn: Sequence[Any]) -> tuple[list, dict]:
    """The positional and keyword arguments from the dynamic slots and static values."""
    args: list = [None] * self.n_pos
    kwargs: dict = {}
    for key, value in zip(self.layout, dyn):
      if type(key) is int:
        args[key] = value
      else:
        kwargs[key] = value
    for pos, value in self.static_pos:
      args[pos] = value
    kwargs.update(self.static_kw)
    return args, kwargs


class Call:
  """One call, outside: dynamic slots (graph-wrapped in graph mode) and their Flat."""

  __slots__ = ("transform", "static", "flat", "slots", "graph", "marked")

  def __init__(self, transform: Transform, static: CallStatic, flat: Flat, slots, graph: Any):
    self.transform = transform
    self.static = static
    self.flat = flat
    self.slots = slots
    self.graph = graph  # the GraphCall (with the caller's roots) or None
    self.marked = False  # set by Inner(..., call=self) when the output holds InputRefs

  @property
  def names(self) -> list[str]:
    """The user-facing names of the slots (for error messages)."""
    return self.transform.slot_names(self.static.layout)

  def finish(
    self, out: Any, updates: Sequence[dict | None], *, carry: bool = False, structural: bool = True
  ) -> Any:
    """Writes updates back, runs the graph exit and resolves returned inputs.

    ``carry``: the output was produced in carry form (scan / loops: no InputRefs).
    ``structural=False``: graph mode's structural changes are dropped (abstract evaluation).
    """
    write_back(self.flat, updates)
    tables = None
    if self.marked and not carry:
      tables = (
        graph_adapter.root_tables(self.graph)
        if self.graph is not None
        else [object_table(s) for s in self.slots]
      )
    if self.graph is not None:
      if not (carry or structural):
        out = (out[0], {})
      out = graph_adapter.exit(self.graph, out, carry=carry)
    if tables is not None:
      out = resolve_inputs(out, tables)
    return out

  # -- graph-mode hooks a transform calls without knowing the mode --------------------------
  def out_prefix(self, prefix: Any, empty: Any) -> Any:
    """A prefix for the output that leaves the JAX call (``out_axes``, ``out_specs``...).

    Graph mode's output carries its structural changes beside the user's output (always
    empty where the transform forbids them): that part takes ``empty``.
    """
    return prefix if self.graph is None else (prefix, empty)

  def selected(self, s: int) -> Callable[[Any], bool]:
    """Which Variables of slot ``s`` are selected for differentiation. Tree mode: Params
    inside Modules, and every Variable outside them (a State or a bare Variable the caller
    passed, as in Flax); graph mode: those in each root's first State (the transform's
    filters choose it)."""
    slot = self.slots[s]
    if self.graph is None:
      if isinstance(slot, Pytree):
        return _is_param
      free = {
        id(x) for x in jax.tree_util.tree_leaves(slot, is_leaf=_is_unit) if isinstance(x, Variable)
      }
      return lambda cell: id(cell) in free or isinstance(cell, Param)
    ids = graph_adapter.selected_ids(slot)
    return lambda cell: id(cell) in ids

  def user_grad(self) -> Callable[[Any], Any]:
    """What turns a gradient shaped like a slot into the form the user gets: the same tree
    in tree mode, the State of the selected substate in graph mode (hashable)."""
    return _same if self.graph is None else graph_adapter.selected_state

  def slot_form(self, trees: Sequence[Any]) -> list:
    """Trees given per slot (jvp's tangents) in the slots' form: graph mode splits their
    Modules like the slots'."""
    if self.graph is None:
      return list(trees)
    n = self.static.n_pos
    filters = [self.transform.graph_filters(k, n) for k in self.static.layout]
    return graph_adapter.to_tree(trees, filters, self.transform.api, self.graph.key.graph_updates)[
      0
    ]


class Inner:
  """One call, inside: ``with Inner(static, values, name) as inner:`` rebuilds the
  arguments with fresh Variables in a new frame (and, in graph mode, Modules around them).

  ``carry=True`` (scan, loops): the output keeps its input form (graph mode's carry form)
  and returned inputs are not replaced by InputRefs. ``fixed=True`` (vmap, shard_map,
  cond...): the function may not change the Variable structure of its arguments.
  """

  __slots__ = (
    "static",
    "values",
    "name",
    "carry",
    "fixed",
    "frame",
    "rebuilt",
    "slots",
    "_finish",
    "_epoch",
    "owner",
    "marked",
    "_outer_build",
  )

  def __init__(
    self,
    static: CallStatic,
    values: Sequence[Sequence[Any]],
    name: str,
    *,
    carry: bool = False,
    fixed: bool = False,
    call: Call | None = None,
  ):
    self.static = static
    self.values = values
    self.name = name
    self.carry = carry
    self.fixed = fixed
    self.owner = call
    self.marked = False

  def __enter__(self) -> Inner:
    # Constructors run inside the trace get their own build scope: a Module built there is
    # frozen (and type-checked) when its constructor returns, inside the trace, not later
    # with the outer constructor's objects, when its values are dead tracers.
    self._outer_build = (BUILD.depth, BUILD.pending)
    BUILD.depth, BUILD.pending = 0, []
    self.frame = push_frame(self.name)
    self._epoch = STRUCTURE.epoch
    static = self.static
    self.rebuilt = [rebuild_arg(p, v) for p, v in zip(static.plans, self.values)]
    self.slots = [a for a, _ in self.rebuilt]
    self._finish = None
    if static.graph is not None:
      outer = self.owner.graph if self.owner is not None else None
      self.slots, self._finish = graph_adapter.enter(
        static.graph, self.slots, carry=self.carry, fixed=self.fixed, outer=outer
      )
    return self

  def __exit__(self, *exc: Any) -> Literal[False]:
    pop_frame(self.frame)
    BUILD.depth, BUILD.pending = self._outer_build
    return False

  def _own_check(self) -> bool:
    # loops and cond/switch compare the structures themselves, naming the branch or carry
    return self.name in ("cond", "switch", "while_loop", "fori_loop")

  def call(self, f: Callable) -> Any:
    """``f`` applied to the rebuilt arguments (static ones re-inserted)."""
    args, kwargs = self.static.assemble(self.slots)
    return f(*args, **kwargs)

  def output(self, out: Any) -> Any:
    """The output in the form that leaves the JAX call: returned inputs marked (unless in
    carry form) and graph mode's finish applied."""
    if self.static.graph is None and STRUCTURE.epoch != self._epoch and not self._own_check():
      check_tree_structure(self.name, self.static, self.rebuilt)
    marked = False
    if not self.carry:
      if self.static.graph is not None:
        tables = graph_adapter.inner_tables(self.slots)
      else:
        tables = [object_table(a) for a in self.slots]
      out, marked = mark_inputs(out, tables)
      if self.static.graph is None:
        check_output_unique(f"pynnx.{self.name}", out)
    self.marked = marked
    if marked and self.owner is not None:
      self.owner.marked = True
    if self._finish is not None:
      out = self._finish(out)
    return out

  def updates(self, policy: Callable = changed) -> list[dict]:
    """Per slot ``{leaf index: value}``: the changed cells (or every cell, by policy)."""
    return [policy(p, fr, v) for p, (_, fr), v in zip(self.static.plans, self.rebuilt, self.values)]


# --- the transformed callable ---------------------------------------------------------------


def argnames_of(f: Callable) -> list[str] | None:
  try:
    params = inspect.signature(f).parameters.values()
  except (TypeError, ValueError):
    return None
  return [
    p.name
    for p in params
    if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  ]


class _Missing:
  def __repr__(self) -> str:
    return "MISSING"


MISSING: Any = _Missing()


def wrap_or_decorate(cls: type, options: dict) -> Any:
  """The public form of every transform: ``options`` is the public function's ``locals()``
  (taken first thing, so it holds exactly its parameters; the first one is the function).
  Returns ``cls(f, **options)``, or a decorator building it when ``f`` is MISSING
  (``@nnx.X(...)``)."""
  options = dict(options)
  f = options.pop(next(iter(options)))
  if f is MISSING:
    return lambda fn: cls(fn, **options)
  return cls(f, **options)


def check_not_bound(f: Any, transform: str) -> None:
  """A bound method of a Module (or a partial of one) would capture the Module: refused."""
  while isinstance(f, functools.partial):
    f = f.func
  if inspect.ismethod(f) and isinstance(f.__self__, (Pytree, Variable)):
    name = getattr(f, "__name__", "method")
    cls = type(f.__self__).__name__
    raise BoundMethodError(
      f"pynnx.{transform} does not accept bound methods such as {cls}(...).{name}: the Module "
      f"would be captured instead of passed, so its updates could not be written back. Use "
      f"the unbound form `pynnx.{transform}({cls}.{name})(module, ...)` or decorate the "
      f"method definition with `@pynnx.{transform}`."
    )


def as_tuple(x: Any, kind: type) -> tuple:
  if x is None:
    return ()
  if isinstance(x, kind):
    return (x,)
  return tuple(x)


def resolve_static(nums: Any, names: Any, argnames: list[str] | None) -> tuple[tuple, tuple]:
  """Like jax.jit: one of argnums/argnames given -> the other inferred from the signature."""
  nums, names = as_tuple(nums, int), as_tuple(names, str)
  if argnames is not None:
    if nums and not names:
      names = tuple(argnames[i] for i in nums if 0 <= i < len(argnames))
    elif names and not nums:
      nums = tuple(argnames.index(n) for n in names if n in argnames)
  return nums, names


class Transform:
  """Base of every transformed callable: binds a call, runs the graph hook and flattens.

  A subclass sets ``transform`` (its public name), ``keywords`` (``"dynamic"``: keyword
  arguments are traced slots like positional ones; ``"reject"``: the JAX primitive takes
  positional arguments only), ``spec_options`` (the options holding specs) and overrides
  :meth:`slot_spec` when it has per-argument specs (in_axes, in_specs, in_shardings): graph
  mode reads StateAxes / StateSharding filters from it by slot, never by tuple position. The constructor stores the transform's options
  as attributes and runs :meth:`setup`; then the instance is immutable. As class attributes
  transforms work as methods (``__get__`` binds the instance as the first argument).
  """

  transform = "transform"
  keywords = "dynamic"
  check_bound = True
  spec_options: tuple[str, ...] = ()  # options holding specs: the per-argument one first

  def __init__(
    self,
    f: Callable,
    *,
    graph: bool | None = None,
    graph_updates: bool | None = None,
    static_argnums: Any = (),
    static_argnames: Any = (),
    **options: Any,
  ):
    if not callable(f):
      raise ConfigError(
        f"pynnx.{self.transform} transforms a function, got {type(f).__name__} {f!r:.40}. "
        f"Pass the function first, `pynnx.{self.transform}(f, ...)`, or decorate it with "
        f"`@pynnx.{self.transform}`."
      )
    if self.check_bound:
      check_not_bound(f, self.transform)
    functools.update_wrapper(self, f, updated=())  # type: ignore[arg-type]
    self.f = f
    self.graph = graph
    self.graph_updates = graph_updates
    self.__dict__.update(options)  # the transform's own options, as attributes
    self.api = f"pynnx.{self.transform}({getattr(f, '__name__', 'f')})"
    self.argnames = argnames_of(f)
    self.static_argnums, self.static_argnames = resolve_static(
      static_argnums, static_argnames, self.argnames
    )
    specs = [options[name] for name in self.spec_options]
    # graph-only specs, or graph_updates=True given explicitly, opt a graph=None call in
    self.forced_graph = graph_adapter.specs_force_graph(self.api, graph, *specs) or (
      graph is None and graph_updates is True
    )
    self.check = SharingCheck(self.api)
    self._layouts: dict[int, tuple] = {}
    self._statics: dict[tuple, CallStatic] = {}
    self._filters: dict[tuple, tuple] = {}
    self.setup()
    object.__setattr__(self, "_pynnx_built", True)

  def setup(self) -> None:
    """A subclass hook, run once the options are set: validate them, derive what calls need."""

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    if "__call__" in cls.__dict__:  # errors leave with pynnx's frames filtered, like JAX's
      cls.__call__ = api_boundary(cls.__dict__["__call__"])  # type: ignore[method-assign]

  def __setattr__(self, name: str, value: Any) -> None:
    if self.__dict__.get("_pynnx_built"):
      raise AttributeError(
        f"{self.api} is immutable once built; create a new transform with the new options."
      )
    object.__setattr__(self, name, value)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:  # every subclass defines its own
    raise NotImplementedError

  def __get__(self, obj: Any, objtype: Any = None) -> Any:
    if obj is None:
      return self
    return functools.partial(self, obj)

  def __repr__(self) -> str:
    return f"<{self.api}>"

  # -- what a subclass may override ------------------------------------------------------
  positional_name = "args"  # unnamed positional slots are called args[k] in errors

  def slot_names(self, layout: Sequence[int | str]) -> list[str]:
    """The names errors use for the dynamic slots: parameter or keyword names."""
    known = self.argnames or []
    return [
      k if isinstance(k, str) else known[k] if k < len(known) else f"{self.positional_name}[{k}]"
      for k in layout
    ]

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    """The per-argument spec of slot ``key`` (a position or a keyword name)."""
    return None

  def graph_filters(self, key: int | str, n_pos: int) -> tuple:
    """Graph mode: the filters splitting slot ``key``'s Modules into States."""
    return graph_adapter.spec_filters(self.slot_spec(key, n_pos))

  # -- the pipeline ----------------------------------------------------------------------
  def bind(self, args: tuple, kwargs: dict) -> Call:
    """Binds the call, applies the graph hook and flattens every dynamic slot."""
    n = len(args)
    if kwargs or self.static_argnums or self.static_argnames:
      layout, slots, static_pos, static_kw = self._bind_general(args, kwargs)
    else:  # the hot path: positional arguments only
      layout = self._layouts.get(n) or self._layouts.setdefault(n, tuple(range(n)))
      slots, static_pos, static_kw = args, (), ()
    gcall = None
    graph = self.graph
    if graph is None and not self.forced_graph:
      graph = _GRAPH_LOCAL.get()
      if graph is UNSET:
        graph = GRAPH_MODE.default
    if graph or self.forced_graph:
      hit = self._filters.get((layout, n))
      if hit is None:
        filters = [self.graph_filters(k, n) for k in layout]
        specs = len(layout) > 1 and any(self.slot_spec(k, n) is not None for k in layout)
        hit = self._filters[(layout, n)] = (filters, specs)
      filters, specs = hit
      if specs:  # a Variable shared by two arguments must get the same spec from both
        graph_adapter.check_shared_specs(self, slots, layout, self.slot_names(layout), n)
      slots, gcall = graph_adapter.to_tree(slots, filters, self.api, self.graph_updates)
    try:
      flat = flatten_args(slots)
    except (TreeStructureError, GraphModeRequiredError):  # name the argument as written
      for slot, name in zip(slots, self.slot_names(layout)):
        check_tree_depth(slot, name)
        check_no_sharing(flatten_with_paths(slot)[0], self.api, name)
      raise
    if flat.may_share:
      self.check(flat, slots, lambda: self.slot_names(layout))
    graph_key = gcall.key if gcall is not None else None
    if not static_pos and not static_kw:
      # Reuse the CallStatic of an identical call structure: jit's cache then matches it
      # by identity. Keyed by the plans' ids, checked by equality (the memo keeps them alive).
      key = (layout, id(graph_key), *map(id, flat.plans))
      static = self._statics.get(key)
      if static is None or static.plans != flat.plans or static.graph is not graph_key:
        if len(self._statics) > 64:
          self._statics.clear()
        static = self._statics[key] = CallStatic(flat.plans, layout, n, (), (), graph_key)
    else:
      static = CallStatic(flat.plans, layout, n, static_pos, static_kw, graph_key)
    return Call(self, static, flat, slots, gcall)

  def _bind_general(self, args: tuple, kwargs: dict) -> tuple:
    """Static arguments and keywords: ``(layout, slots, static_pos, static_kw)``."""
    n = len(args)
    if kwargs and self.keywords == "reject":
      raise ConfigError(
        f"{self.api} was called with keyword argument(s) {', '.join(sorted(kwargs))}, but "
        f"pynnx.{self.transform} passes arguments positionally (as the JAX primitive does). "
        f"Pass them positionally."
      )
    nums = {i % n for i in self.static_argnums if -n <= i < n}
    static_pos = tuple((i, args[i]) for i in sorted(nums))
    layout: list = [i for i in range(n) if i not in nums]
    slots = [args[i] for i in layout]
    static_kw = tuple((k, kwargs[k]) for k in sorted(kwargs) if k in self.static_argnames)
    kwnames = sorted(k for k in kwargs if k not in self.static_argnames)
    layout += kwnames
    slots += [kwargs[k] for k in kwnames]
    return tuple(layout), slots, static_pos, static_kw

  def specs_for(self, call: Call) -> list:
    """Per dynamic slot: its spec, as a GraphNode-shaped prefix in graph mode."""
    n = call.static.n_pos
    specs = [self.slot_spec(k, n) for k in call.static.layout]
    if call.graph is not None:
      specs = [graph_adapter.node_prefix(s, a) for s, a in zip(specs, call.slots)]
    return specs

  def run_once(self, call: Call) -> Callable:
    """The inner function of a transform that calls ``f`` once on the slots' values:
    ``inner(*values) -> (out, updates)``."""
    f, static = self.f, call.static

    def inner(*values: Any) -> tuple:
      with Inner(static, values, self.transform, call=call) as scope:
        out = scope.output(scope.call(f))
        updates = scope.updates()
      return out, updates

    return self.named(inner)

  def named(self, inner: Callable) -> Callable:
    """``inner`` carrying the user function's name, so JAX errors name it."""
    for attr in ("__name__", "__qualname__"):
      value = getattr(self.f, attr, None)
      if isinstance(value, str):
        setattr(inner, attr, value)
    return inner
