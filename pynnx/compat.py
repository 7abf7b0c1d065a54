"""``nnx.compat``: the graph-mode defaults of Flax NNX, for code written against them.

Every function here is the ``pynnx`` function of the same name with ``graph=True`` (and
``graph_updates=True`` where it has that option) as its default, exactly the set
``flax.nnx.compat`` exposes, so ``from flax.nnx import compat`` code moves unchanged.
Passing ``graph=`` / ``graph_updates=`` explicitly still overrides the default.

Example:
  >>> layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  >>> class Tied(nnx.Module):
  ...   def __init__(self):
  ...     self.a, self.b = layer, layer
  >>> graphdef, state = nnx.compat.split(Tied())   # shared layer: graph mode by default
  >>> sorted(state.keys())
  ['a']
"""

from __future__ import annotations

import functools

from . import _functional, _recursive_map, _rng_helpers, _transforms

_graph = functools.partial

# graph walks
split = _graph(_functional.split, graph=True)
state = _graph(_functional.state, graph=True)
clone = _graph(_functional.clone, graph=True)
graphdef = _graph(_functional.graphdef, graph=True)
flatten = _graph(_functional.flatten, graph=True)
iter_graph = _graph(_functional.iter_graph, graph=True)
recursive_map = _graph(_recursive_map.recursive_map, graph=True)

# rngs
split_rngs = _graph(_rng_helpers.split_rngs, graph=True, graph_updates=True)
fork_rngs = _graph(_rng_helpers.fork_rngs, graph=True, graph_updates=True)
reseed = _graph(_rng_helpers.reseed, graph=True)
backup_keys = _graph(_rng_helpers.backup_keys, graph=True)

# transforms
jit = _graph(_transforms.jit, graph=True, graph_updates=True)
shard_map = _graph(_transforms.shard_map, graph=True, graph_updates=True)
grad = _graph(_transforms.grad, graph=True, graph_updates=True)
value_and_grad = _graph(_transforms.value_and_grad, graph=True, graph_updates=True)
custom_vjp = _graph(_transforms.custom_vjp, graph=True, graph_updates=True)
vjp = _graph(_transforms.vjp, graph=True, graph_updates=True)
jvp = _graph(_transforms.jvp, graph=True, graph_updates=True)
remat = _graph(_transforms.remat, graph=True, graph_updates=True)
vmap = _graph(_transforms.vmap, graph=True, graph_updates=True)
scan = _graph(_transforms.scan, graph=True, graph_updates=True)
while_loop = _graph(_transforms.while_loop, graph=True, graph_updates=True)
fori_loop = _graph(_transforms.fori_loop, graph=True, graph_updates=True)
eval_shape = _graph(_transforms.eval_shape, graph=True, graph_updates=True)
cond = _graph(_transforms.cond, graph=True, graph_updates=True)
switch = _graph(_transforms.switch, graph=True, graph_updates=True)

# Not yet in pynnx (flax.nnx.compat has them): cached_partial, view (pynnx.view has no
# graph= option), view_info, iter_modules, iter_children, pmap, checkify,
# get_abstract_model.
