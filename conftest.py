# Doctests in pynnx/ run with `jax`, `jnp` and `nnx` already imported.
import importlib.util
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

# The Linen bridge modules import flax (optional): without it their doctests are not collected.
collect_ignore = (
  [] if importlib.util.find_spec("flax") else ["pynnx/bridge/linen.py", "pynnx/bridge/variables.py"]
)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
  import pynnx

  doctest_namespace.update(jax=jax, jnp=jnp, nnx=pynnx)
