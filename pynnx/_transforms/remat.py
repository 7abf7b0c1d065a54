"""``nnx.remat``: ``jax.checkpoint`` over the lift.

The wrapped function's intermediates are recomputed in the backward pass instead of being
stored. Modules are arguments like in every pynnx transform and their Variable updates are
written back. Static arguments (``static_argnums``) are closed over, so Python control flow
may depend on them; keyword arguments are traced like positional ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .lift import MISSING, Transform, wrap_or_decorate

__all__ = ["remat"]


class RematWrapped(Transform):
  """A function transformed by ``nnx.remat``; call it like the original."""

  transform = "remat"
  prevent_cse: bool
  policy: Any

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    inner = jax.checkpoint(self.run_once(call), prevent_cse=self.prevent_cse, policy=self.policy)
    return call.finish(*inner(*call.flat.values))


def remat(
  f: Callable = MISSING,
  *,
  prevent_cse: bool = True,
  static_argnums: Any = (),
  policy: Callable[..., bool] | None = None,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.checkpoint`` (``jax.remat``): recompute ``f``'s intermediates on the
  backward pass instead of storing them.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> block = nnx.remat(lambda m, x: jnp.sin(m(x)))
    >>> grads = nnx.grad(lambda m, x: jnp.sum(block(m, x)))(m, jnp.ones((4, 2)))
    >>> grads.kernel[...].shape
    (2, 3)
  """
  return wrap_or_decorate(RematWrapped, locals())
