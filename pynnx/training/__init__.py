"""Training utilities: ``Optimizer`` (optax) and metrics (``nnx.metrics``)."""

from . import metrics as metrics
from . import optimizer as optimizer
from . import summary as summary
from .ema import EMA as EMA
from .metrics import Metric as Metric
from .metrics import MultiMetric as MultiMetric
from .optimizer import ModelAndOptimizer as ModelAndOptimizer
from .optimizer import Optimizer as Optimizer
from .summary import tabulate as tabulate
from .train_state import TrainState as TrainState

__all__ = [
  "metrics",
  "optimizer",
  "Metric",
  "MultiMetric",
  "ModelAndOptimizer",
  "Optimizer",
  "EMA",
  "TrainState",
  "summary",
  "tabulate",
]
