"""Initializers (the ``jax.nn.initializers`` family under Flax's names)."""

from jax.nn.initializers import (  # noqa: F401
  constant,
  glorot_normal,
  glorot_uniform,
  he_normal,
  he_uniform,
  lecun_normal,
  lecun_uniform,
  normal,
  ones,
  orthogonal,
  truncated_normal,
  uniform,
  variance_scaling,
  xavier_normal,
  xavier_uniform,
  zeros,
)
