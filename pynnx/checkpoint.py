"""Save and restore pynnx state with orbax-checkpoint (``pip install pynnx[checkpoint]``).

A thin layer over ``orbax.checkpoint.StandardCheckpointer`` that adds one thing: before any
array is read, the checkpoint's tree (paths, shapes, dtypes) is compared with the target's,
and the first difference raises :class:`pynnx.StateMismatchError` naming the path as you
would type it (``model.layers[0].kernel``). A checkpoint orbax cannot read (missing or
damaged files) raises the same error class, with orbax's reason.

What can be saved: a Module (its ``nnx.state`` is saved), a ``State`` (for example
``nnx.state(model, nnx.Param)`` or ``nnx.state(optimizer)``), or any pytree of arrays (a
pure dict from ``State.to_pure_dict()``). ``restore`` takes a target of the same kind —
concrete, or abstract from ``nnx.eval_shape`` — and returns a new object of that kind; an
abstract target's shardings decide where the restored arrays are placed.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from ._core.errors import CheckpointArgumentError, ConfigError, StateMismatchError
from ._core.paths import format_path, key_to_part
from ._core.pytree import Pytree
from ._core.variables import Variable, is_variable
from ._functional import merge, split, state

__all__ = ["save", "restore"]


def _checkpointer() -> Any:
  try:
    import orbax.checkpoint as ocp
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
      "pynnx.checkpoint needs orbax-checkpoint: pip install 'pynnx[checkpoint]'"
    ) from err
  return ocp.StandardCheckpointer()


def _as_tree(tree: Any) -> Any:
  return state(tree) if isinstance(tree, Pytree) else tree  # Modules, Rngs, Optimizers...


# Typed PRNG keys (the values of RngKey Variables) have no on-disk dtype: they are stored as
# their uint32 key data and wrapped back into keys of the target's implementation on restore.
_KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _impl_name(dtype: Any) -> str:
  for name in _KEY_IMPLS:
    if jax.random.key(0, impl=name).dtype == dtype:
      return name
  raise StateMismatchError(f"pynnx.checkpoint: unsupported PRNG key type {dtype}.")


def _encode(tree: Any) -> Any:
  """Key arrays -> their uint32 data (concrete values, or shapes for abstract targets)."""

  def encode(x: Any) -> Any:
    if not _is_key(x):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.eval_shape(jax.random.key_data, x)
    return jax.random.key_data(x)

  return jax.tree.map(encode, tree)


def _decode(restored: Any, target: Any) -> Any:
  def decode(value: Any, like: Any) -> Any:
    if not _is_key(like):
      return value
    key = jax.random.wrap_key_data(value, impl=_impl_name(like.dtype))
    sharding = getattr(like, "sharding", None)
    return key if sharding is None else jax.device_put(key, sharding)

  return jax.tree.map(decode, restored, target)


def _check_args(api: str, directory: Any, tree: Any, what: str, allowed: tuple) -> None:
  """Rejects a folder that is not a path and a tree with no array leaves or a non-array one."""
  if not isinstance(directory, (str, pathlib.PurePath)):
    raise CheckpointArgumentError(
      f"pynnx.checkpoint.{api}: the folder must be a str or a pathlib.Path, got "
      f"{type(directory).__name__} {directory!r:.40}."
    )
  leaves = jax.tree.leaves(_as_tree(tree))
  bad = next((x for x in leaves if not isinstance(x, allowed)), None)
  if not leaves or bad is not None:
    got = "no arrays" if not leaves else f"a {type(bad).__name__} leaf ({bad!r:.40})"
    raise CheckpointArgumentError(
      f"pynnx.checkpoint.{api}: the {what} must be a Module, a State or a pytree of arrays, "
      f"but {type(tree).__name__} {tree!r:.40} has {got}. Pass e.g. the model itself or "
      "`nnx.state(model)`."
    )


_ARRAYS = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)


def save(directory: str | pathlib.Path, tree: Any, *, force: bool = False) -> pathlib.Path:
  """Writes ``tree`` (a Module's state, a State or a pytree of arrays) to ``directory``.

  The call returns once the checkpoint is complete on disk.

  Args:
    directory: the checkpoint folder; it must not exist yet unless ``force=True``.
    tree: a Module (its ``nnx.state`` is saved), a ``State`` or a pytree of arrays.
    force: overwrite an existing checkpoint at ``directory``.

  Returns:
    the absolute path of the checkpoint.

  Raises:
    ConfigError: ``directory`` exists and ``force`` is False.

  Example:
    >>> import tempfile, pathlib
    >>> from pynnx import checkpoint
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> path = checkpoint.save(pathlib.Path(tempfile.mkdtemp()) / "ckpt", model)
    >>> restored = checkpoint.restore(path, nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(1))))
    >>> bool(jnp.array_equal(restored.kernel[...], model.kernel[...]))
    True
  """
  _check_args("save", directory, tree, "tree to save", (*_ARRAYS, int, float, complex))
  path = pathlib.Path(directory).absolute()
  if path.exists() and not force:
    raise ConfigError(
      f"pynnx.checkpoint.save: {str(path)!r} already exists. Pass force=True to overwrite it, "
      "or save to a new folder (one per step, e.g. ckpt/step_100)."
    )
  checkpointer = _checkpointer()
  checkpointer.save(path, _encode(_as_tree(tree)), force=force)
  checkpointer.wait_until_finished()
  checkpointer.close()
  return path


def _target_leaves(tree: Any) -> list[tuple[tuple[str, ...], tuple, Any, tuple, Any]]:
  """(orbax path, shape, dtype, user path, sharding or None) for every array leaf."""
  out = []
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
  for key_path, leaf in flat:
    parts = tuple(key_to_part(k) for k in key_path)
    value = leaf.get_value() if isinstance(leaf, Variable) else leaf
    if value is None:
      continue
    stored = tuple(str(p) for p in parts) + (("value",) if isinstance(leaf, Variable) else ())
    sharding = getattr(value, "sharding", None)
    out.append((stored, tuple(np.shape(value)), np.dtype(value.dtype), parts, sharding))
  return out


def _stored_leaves(tree_metadata: Any) -> dict[tuple[str, ...], Any]:
  flat = jax.tree_util.tree_flatten_with_path(tree_metadata)[0]
  return {tuple(str(key_to_part(k)) for k in path): meta for path, meta in flat}


def _check(directory: pathlib.Path, tree: Any, root: str, stored: dict) -> None:
  """Raises StateMismatchError at the first path where the checkpoint and target differ."""
  where = f"pynnx.checkpoint.restore({str(directory)!r})"
  seen = set()
  for key, shape, dtype, parts, sharding in _target_leaves(tree):
    seen.add(key)
    user_path = format_path(parts, root)
    if key not in stored:
      raise StateMismatchError(
        f"{where}: {user_path} (shape {shape}, {dtype}) is missing from the checkpoint. "
        "The checkpoint was saved from a different model: restore into a target built like "
        "the saved one, or copy the matching part with nnx.update."
      )
    meta = stored[key]
    saved_shape, saved_dtype = tuple(meta.shape), np.dtype(meta.dtype)
    if saved_shape != shape or saved_dtype != dtype:
      raise StateMismatchError(
        f"{where}: {user_path} is {saved_shape} {saved_dtype} in the checkpoint but "
        f"{shape} {dtype} in the target. Build the target with the configuration the "
        "checkpoint was saved with."
      )
    # Checked here, not left to orbax: a read that fails part-way leaves orbax's reader
    # callbacks pending on a closed event loop.
    if sharding is not None:
      try:
        sharding.shard_shape(shape)
      except ValueError as err:
        raise StateMismatchError(
          f"{where}: the target's sharding for {user_path} does not fit its shape {shape} "
          f"({err}). Choose a PartitionSpec whose mesh axis sizes divide the sharded "
          "dimensions, or leave that dimension unsharded (None)."
        ) from err
  extra = [k for k in stored if k not in seen]
  if extra:
    parts = extra[0][:-1] if extra[0][-1] == "value" else extra[0]
    raise StateMismatchError(
      f"{where}: the checkpoint holds {format_path(parts, root)}, which the target does not "
      f"have ({len(extra)} such entries). Restore into a target built like the saved model, "
      "or save and restore a filtered state (nnx.state(model, nnx.Param))."
    )


def restore(directory: str | pathlib.Path, target: Any) -> Any:
  """Reads the checkpoint at ``directory`` into the structure of ``target``.

  Args:
    directory: a folder written by :func:`save` (or by orbax's ``StandardCheckpointer``).
    target: a Module, a ``State`` or a pytree of arrays, concrete or abstract (from
      ``nnx.eval_shape``; ``jax.ShapeDtypeStruct`` leaves with a ``sharding`` are restored
      with that sharding).

  Returns:
    a new object like ``target`` holding the saved values (a Module for a Module).

  Raises:
    StateMismatchError: the checkpoint cannot be read, or its paths, shapes or dtypes differ
      from the target's; the message names the first differing path.
  """
  _check_args("restore", directory, target, "target", _ARRAYS)
  path = pathlib.Path(directory).absolute()
  is_module = isinstance(target, Pytree)
  tree = _as_tree(target)
  root = "model" if is_module else "state"
  checkpointer = _checkpointer()
  try:
    try:
      item = checkpointer.metadata(path).item_metadata
    except Exception as err:
      raise StateMismatchError(
        f"pynnx.checkpoint.restore({str(path)!r}): the checkpoint could not be read "
        f"({type(err).__name__}: {err}). Check the path, or save it again."
      ) from err
    if item is None:
      raise StateMismatchError(
        f"pynnx.checkpoint.restore({str(path)!r}): the checkpoint could not be read (no "
        "readable tree metadata: not a checkpoint folder, or its files are damaged). Check "
        "the path, or save it again."
      )
    stored = _stored_leaves(item.tree)
    on_disk = _encode(tree)
    _check(path, on_disk, root, stored)
    try:
      restored = _decode(checkpointer.restore(path, on_disk), tree)
    except Exception as err:
      raise StateMismatchError(
        f"pynnx.checkpoint.restore({str(path)!r}): orbax could not read the checkpoint's "
        f"arrays into the target ({type(err).__name__}: {err}). Either the files are damaged "
        "(save the checkpoint again) or the target's shardings do not fit its shapes."
      ) from err
  finally:
    checkpointer.close()
  if is_module:
    graphdef, _ = split(target)
    return merge(graphdef, restored)
  return restored
