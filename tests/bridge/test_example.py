"""examples/equinox_interop.py runs end to end at a tiny size."""

import importlib.util
import pathlib

import equinox as eqx
import jax

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "equinox_interop.py"


def load():
  spec = importlib.util.spec_from_file_location("example_equinox_interop", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_equinox_interop_example_trains_and_exports(capsys):
  example = load()
  with jax.numpy_dtype_promotion("standard"):  # optax momentum mixes Python floats in
    result = example.main(["--steps", "20", "--seed", "1"])
  assert result["losses"][-1] < result["losses"][0]
  assert type(result["encoder"]) is eqx.nn.MLP and result["weights_changed"]
  assert result["export_max_diff"] <= 1e-6
  assert "exported MLP" in capsys.readouterr().out
