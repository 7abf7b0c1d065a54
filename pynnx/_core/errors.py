"""The pynnx error hierarchy.

Every error pynnx raises on bad user input is a :class:`PynnxError`. Each subclass also
derives from the builtin a Python user would expect (``ValueError``, ``TypeError``,
``AttributeError``...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class PynnxError(Exception):
  """Base class of every error pynnx raises on bad input."""


class FrozenModuleError(PynnxError, AttributeError):
  """An attribute of a built (frozen) Module or Pytree was assigned or deleted."""


class SharedReferenceError(PynnxError, ValueError):
  """A Variable (or Module) is reachable twice while in tree mode."""


class FilterError(PynnxError, ValueError):
  """A filter is malformed, or filters leave Variables unmatched."""


class StateMismatchError(PynnxError, ValueError):
  """A State does not fit the GraphDef / Module it is merged into or updates."""


class MissingStateError(StateMismatchError, TypeError):
  """``nnx.merge(graphdef)`` was called without a State (a ``TypeError`` in flax too)."""


class VariableInPlaceError(PynnxError, NotImplementedError):
  """``variable += x`` (an augmented assignment on the Variable itself), as in flax."""


class NotAVariableError(PynnxError, TypeError):
  """A non-Variable value was given where a Variable is expected."""


class StaticAttributeError(PynnxError, TypeError, ValueError):
  """A static attribute is not hashable (static attributes are compile-time keys)."""


class GraphModeRequiredError(PynnxError, ValueError):
  """A graph-only feature (DiffState, StateAxes, StateSharding...) was used with graph=False."""


class TraceContextError(PynnxError, ValueError):
  """A Variable was mutated from inside a transform it was not passed into."""


class LeakedTracerError(PynnxError, RuntimeError):
  """A Variable holds a traced value that escaped the transform that produced it."""


class AxisSpecError(PynnxError, ValueError):
  """An in_axes / out_axes / spec prefix does not fit the arguments, or two logical axis
  rules map one name to different mesh axes."""


class StructureChangeError(PynnxError, ValueError):
  """The Variable structure changed where it must stay fixed (scan carry, cond branches...)."""


class ShapeError(PynnxError, ValueError):
  """An input's shape does not fit a layer."""


class RngError(PynnxError, ValueError):
  """A random stream is missing or misused."""


class RngStreamNotFoundError(PynnxError, AttributeError, KeyError):
  """An Rngs has no stream of that name and no ``default`` stream to fall back to."""

  def __str__(self) -> str:  # KeyError would quote the message
    return str(self.args[0]) if self.args else ""


class RngCallError(PynnxError, TypeError):
  """A random stream was called with arguments (``rngs.normall((2, 3))``, a misspelt method)."""


class ConfigError(PynnxError, TypeError):
  """A setting was given a value of the wrong kind."""


class AttributeNotFoundError(PynnxError, AttributeError, ValueError):
  """``set_attributes`` / ``view`` named an attribute no submodule has.

  A ``ValueError`` as in Flax (and an ``AttributeError``, as pynnx raised before).
  """


class LayerArgumentError(PynnxError, ValueError):
  """A layer was given an invalid argument (a non-positive size, a rate outside [0, 1], ...)."""


class MetricArgumentError(PynnxError, TypeError):
  """A metric was given a missing or wrongly typed argument."""


class BoundMethodError(PynnxError, ValueError):
  """A bound method was given to a transform: its Module would be captured, not passed."""


class TreeStructureError(PynnxError, ValueError):
  """A Module is too deeply nested, or holds a reference cycle, for tree mode."""


class CloneArgumentError(PynnxError, ValueError):
  """``nnx.clone`` was given options that contradict each other."""


class UnsupportedOptionError(PynnxError, ValueError):
  """A Flax option pynnx does not implement was turned on (pynnx never ignores one)."""


class BridgeError(PynnxError, TypeError):
  """``nnx.bridge`` was given an object it cannot convert (not an eqx.Module, a bad State...)."""


class LinenBridgeError(PynnxError, ValueError):
  """The Linen bridge (``nnx.bridge.ToNNX`` / ``ToLinen``) was misused: a call before
  ``lazy_init``, a value with no collection name, two collections at one path..."""


class TransformArgumentError(PynnxError, ValueError):
  """An argument or option a transform cannot accept in that place (e.g. a Variable among
  ``jit_partial``'s runtime arguments, ``sow`` of a new Variable inside a tree-mode transform)."""


class ArgumentTypeError(PynnxError, AttributeError, TypeError):
  """An argument is not of the kind the API takes (``None`` where a Module, an Rngs, a State,
  an optax transformation or an array is expected).

  Also an ``AttributeError``: Flax fails on these deep inside, with one.
  """


class CheckpointArgumentError(ArgumentTypeError, ValueError):
  """``nnx.checkpoint`` was given something it cannot save or restore into (no arrays, a
  string leaf, a folder that is not a path). A ``ValueError`` as orbax raises for these."""


class UpdateContextError(PynnxError, ValueError):
  """``nnx.update_context`` misuse: no context for a tag, or merges and splits out of order."""


class PathConflictError(PynnxError, TypeError, ValueError):
  """A flat mapping has one path that is both a leaf and the prefix of another path."""


class VariableIndexError(PynnxError, TypeError):
  """``variable[index]`` / ``get_value(index=...)`` on a value that cannot be indexed."""


class MetadataNotFoundError(PynnxError, KeyError, AttributeError):
  """``Variable.get_metadata(name)`` for a name that is not set, without a default.

  A ``KeyError`` as in Flax (and an ``AttributeError``, as pynnx raised before).
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


class VariableNameError(PynnxError, ValueError):
  """A collection name (``'params'``) registered twice, or looked up but never registered."""


class VariableAttributeError(PynnxError, AttributeError):
  """Setting or deleting a Variable attribute that is not metadata (``v.shape = ...``)."""


class MeshAxisError(PynnxError, ValueError):
  """A Variable's sharding names an axis the mesh it is placed on does not have."""
