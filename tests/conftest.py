import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# The suite checks behaviour, not speed: most of its time is XLA compiling small programs, and
# with most XLA optimizations off it runs in about half the time. Parity tests run Flax and
# pynnx in the same process, so both see the same setting. PYNNX_TEST_XLA_OPT=1 restores them.
if not os.environ.get("PYNNX_TEST_XLA_OPT"):
  jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(params=[False, True], ids=["tree", "graph"])
def graph(request):
  """Runs a test in tree mode and in graph mode."""
  return request.param
