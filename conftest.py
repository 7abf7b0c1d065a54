# Doctests in pynnx/ run with `jax`, `jnp` and `nnx` already imported.
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
  import pynnx

  doctest_namespace.update(jax=jax, jnp=jnp, nnx=pynnx)
