"""Graph-mode split/merge (being built; see issue 4)."""

from __future__ import annotations

from typing import Any

from .._core.errors import GraphModeRequiredError


def _unavailable(*args: Any, **kwargs: Any) -> Any:
  raise GraphModeRequiredError("graph mode is not available yet")


split = merge = state = graphdef = update = clone = pop = iter_graph = flatten = unflatten = _unavailable
