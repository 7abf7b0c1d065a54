"""Graph mode in front of the tree lift (filled in with pynnx/_graph)."""

from __future__ import annotations

from typing import Any

from .._core.errors import GraphModeRequiredError


def to_tree(args: tuple, kwargs: dict, api: str, graph_updates: Any) -> tuple:
  raise GraphModeRequiredError(f"{api}: graph mode is not available yet")


def enter(graph_static: Any, args: list, kwargs: dict) -> tuple:
  raise GraphModeRequiredError("graph mode is not available yet")


def exit(graph_static: Any, out: Any) -> Any:
  raise GraphModeRequiredError("graph mode is not available yet")
