"""pynnx: Flax NNX's API on frozen-pytree Modules — ``import pynnx as nnx``.

Tree mode (Modules as plain JAX pytrees) is the default; graph mode (shared references,
DiffState, StateAxes, StateSharding) is opt-in with ``graph=True`` or ``nnx.set_graph_mode``.
"""

from . import checkpoint as checkpoint  # orbax save/restore; orbax is imported lazily
from . import compat as compat
from . import traversals as traversals
from ._core import filters as filterlib  # noqa: F401  (public module alias)
from ._core.config import set_graph_mode as set_graph_mode
from ._core.config import set_graph_updates as set_graph_updates
from ._core.eager import VarDefaults as VarDefaults
from ._core.eager import logical_axis_rules as logical_axis_rules
from ._core.eager import use_eager_sharding as use_eager_sharding
from ._core.eager import using_eager_sharding as using_eager_sharding
from ._core.eager import var_defaults as var_defaults
from ._core.errors import ArgumentTypeError as ArgumentTypeError
from ._core.errors import AttributeNotFoundError as AttributeNotFoundError
from ._core.errors import AxisSpecError as AxisSpecError
from ._core.errors import BoundMethodError as BoundMethodError
from ._core.errors import BridgeError as BridgeError
from ._core.errors import CheckpointArgumentError as CheckpointArgumentError
from ._core.errors import CloneArgumentError as CloneArgumentError
from ._core.errors import ConfigError as ConfigError
from ._core.errors import FilterError as FilterError
from ._core.errors import FrozenModuleError as FrozenModuleError
from ._core.errors import GraphModeRequiredError as GraphModeRequiredError
from ._core.errors import LayerArgumentError as LayerArgumentError
from ._core.errors import LeakedTracerError as LeakedTracerError
from ._core.errors import LinenBridgeError as LinenBridgeError
from ._core.errors import MeshAxisError as MeshAxisError
from ._core.errors import MetadataNotFoundError as MetadataNotFoundError
from ._core.errors import MetricArgumentError as MetricArgumentError
from ._core.errors import MissingStateError as MissingStateError
from ._core.errors import NotAVariableError as NotAVariableError
from ._core.errors import PathConflictError as PathConflictError
from ._core.errors import PynnxError as PynnxError
from ._core.errors import RngCallError as RngCallError
from ._core.errors import RngError as RngError
from ._core.errors import RngStreamNotFoundError as RngStreamNotFoundError
from ._core.errors import ShapeError as ShapeError
from ._core.errors import SharedReferenceError as SharedReferenceError
from ._core.errors import StateMismatchError as StateMismatchError
from ._core.errors import StaticAttributeError as StaticAttributeError
from ._core.errors import StructureChangeError as StructureChangeError
from ._core.errors import TraceContextError as TraceContextError
from ._core.errors import TransformArgumentError as TransformArgumentError
from ._core.errors import TreeStructureError as TreeStructureError
from ._core.errors import UnsupportedOptionError as UnsupportedOptionError
from ._core.errors import UpdateContextError as UpdateContextError
from ._core.errors import VariableAttributeError as VariableAttributeError
from ._core.errors import VariableIndexError as VariableIndexError
from ._core.errors import VariableInPlaceError as VariableInPlaceError
from ._core.errors import VariableNameError as VariableNameError
from ._core.filters import All as All
from ._core.filters import Any_ as Any  # noqa: F401  (Flax name)
from ._core.filters import Everything as Everything
from ._core.filters import Not as Not
from ._core.filters import Nothing as Nothing
from ._core.filters import OfType as OfType
from ._core.filters import PathContains as PathContains
from ._core.filters import WithTag as WithTag
from ._core.module import Dict as Dict
from ._core.module import List as List
from ._core.module import Module as Module
from ._core.module import Sequential as Sequential
from ._core.module import display as display
from ._core.module import view as view
from ._core.module import with_attributes as with_attributes
from ._core.pytree import Data as Data
from ._core.pytree import Object as Object
from ._core.pytree import Pytree as Pytree
from ._core.pytree import Static as Static
from ._core.pytree import data as data
from ._core.pytree import dataclass as dataclass
from ._core.pytree import is_data as is_data
from ._core.pytree import register_data_type as register_data_type
from ._core.pytree import static as static
from ._core.rngs import Rngs as Rngs
from ._core.rngs import RngStream as RngStream
from ._core.sharding import VariableMetadata as VariableMetadata
from ._core.sharding import get_named_sharding as get_named_sharding
from ._core.sharding import get_partition_spec as get_partition_spec
from ._core.sharding import with_metadata as with_metadata
from ._core.sharding import with_partitioning as with_partitioning
from ._core.state import FlatState as FlatState
from ._core.state import State as State
from ._core.state import filter_state as filter_state
from ._core.state import from_flat_state as from_flat_state
from ._core.state import map_state as map_state
from ._core.state import merge_state as merge_state
from ._core.state import replace_by_pure_dict as replace_by_pure_dict
from ._core.state import restore_int_paths as restore_int_paths
from ._core.state import split_state as split_state
from ._core.state import to_flat_state as to_flat_state
from ._core.state import to_pure_dict as to_pure_dict
from ._core.tree import ApplyCaller as ApplyCaller
from ._core.tree import GraphDef as GraphDef
from ._core.tree import GraphState as GraphState
from ._core.tree import TreeGraphDef as TreeGraphDef
from ._core.tree import call as call
from ._core.variables import BatchStat as BatchStat
from ._core.variables import Cache as Cache
from ._core.variables import Intermediate as Intermediate
from ._core.variables import OptArray as OptArray
from ._core.variables import OptState as OptState
from ._core.variables import OptVariable as OptVariable
from ._core.variables import Param as Param
from ._core.variables import Perturbation as Perturbation
from ._core.variables import RngCount as RngCount
from ._core.variables import RngKey as RngKey
from ._core.variables import RngState as RngState
from ._core.variables import Variable as Variable
from ._core.variables import register_variable_name as register_variable_name
from ._core.variables import variable_name_from_type as variable_name_from_type
from ._core.variables import variable_type_from_name as variable_type_from_name
from ._functional import clone as clone
from ._functional import flatten as flatten
from ._functional import graphdef as graphdef
from ._functional import iter_graph as iter_graph
from ._functional import merge as merge
from ._functional import pop as pop
from ._functional import split as split
from ._functional import state as state
from ._functional import unflatten as unflatten
from ._functional import unpack as unpack
from ._functional import update as update
from ._graph.api import from_tree as from_tree
from ._graph.api import to_tree as to_tree
from ._graph_utils import A as A
from ._graph_utils import M as M
from ._graph_utils import MergeContext as MergeContext
from ._graph_utils import PureState as PureState
from ._graph_utils import SplitContext as SplitContext
from ._graph_utils import abstract_with_sharding as abstract_with_sharding
from ._graph_utils import as_abstract as as_abstract
from ._graph_utils import as_pure as as_pure
from ._graph_utils import check_pytree as check_pytree
from ._graph_utils import find_duplicates as find_duplicates
from ._graph_utils import get_abstract_model as get_abstract_model
from ._graph_utils import has_data as has_data
from ._graph_utils import iter_children as iter_children
from ._graph_utils import iter_module_children as iter_module_children
from ._graph_utils import iter_modules as iter_modules
from ._graph_utils import merge_context as merge_context
from ._graph_utils import pure as pure
from ._graph_utils import set_metadata as set_metadata
from ._graph_utils import split_context as split_context
from ._graph_utils import variables as variables
from ._graph_utils import vars_as as vars_as
from ._graph_utils import view_info as view_info
from ._graph_utils import with_vars as with_vars
from ._recursive_map import map as map  # noqa: A004  (Flax's name)
from ._recursive_map import recursive_map as recursive_map
from ._rng_helpers import fork_rngs as fork_rngs
from ._rng_helpers import reseed as reseed
from ._rng_helpers import restore_rngs as restore_rngs
from ._rng_helpers import split_rngs as split_rngs
from ._rng_helpers import with_rngs as with_rngs
from ._transforms import *  # noqa: F403  (each transform module defines __all__)
from ._update_context import UpdateContext as UpdateContext
from ._update_context import current_update_context as current_update_context
from ._update_context import update_context as update_context

# isort: split
# Before nn: the layers are decorated with nnx.typed.
from .typing import TypeCheckError as TypeCheckError
from .typing import typed as typed

# isort: split
from .nn import *  # noqa: F403
from .nn import initializers as initializers
from .training import *  # noqa: F403

# isort: split
# After nn: the bridge is written on the public API.
from . import bridge as bridge

# isort: split
# Last: Flax's submodule names (`nnx.graph.split`, `nnx.rnglib.Rngs`, ...) over the names above.
from ._submodules import install as _install_submodules

_install_submodules(globals(), __name__)

__version__ = "0.1.0"
