"""The examples in examples/ run end to end (with few epochs, to stay fast)."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
  spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def digits():
  pytest.importorskip("sklearn")
  pytest.importorskip("matplotlib")
  pytest.importorskip("tqdm")
  return load_example("digits")


def run_digits(digits, out, epochs):
  # optax's Adam mixes an int32 step count with Python floats: fine under JAX's default
  # promotion, rejected by the strict promotion this test suite runs with.
  with jax.numpy_dtype_promotion("standard"):
    return digits.main(["--epochs", str(epochs), "--out", str(out), "--no-progress"])


@pytest.fixture(scope="module")
def digits_run(digits, tmp_path_factory):
  out = tmp_path_factory.mktemp("digits") / "plots"  # missing: the example creates it
  return out, run_digits(digits, out, epochs=3)


def test_digits_trains_and_writes_plot(digits_run):
  out, result = digits_run
  png = out / "digits_loss.png"
  assert result["plot"] == png and png.exists()
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
  assert result["test_accuracy"] > 0.85
  history = result["history"]
  assert len(history["train_loss"]) == 3 and history["train_loss"][-1] < history["train_loss"][0]
  assert result["steps"] == 3 * (1437 // 64)  # 1797 digits, 20 % held out, full batches


def test_digits_is_deterministic(digits, digits_run, tmp_path, capsys):
  # A fresh 1-epoch run reproduces the first epoch of the 3-epoch run exactly.
  _, result = digits_run
  again = run_digits(digits, tmp_path, epochs=1)
  assert {k: v[:1] for k, v in result["history"].items()} == again["history"]
  assert "test accuracy:" in capsys.readouterr().out


# --- the other examples: one tiny run each -----------------------------------------------


def run_example(name: str, argv: list[str]):
  for dep in ("matplotlib", "tqdm"):
    pytest.importorskip(dep)
  with jax.numpy_dtype_promotion("standard"):  # as users run them (see run_digits)
    return load_example(name).main([*argv, "--no-progress"])


def assert_png(path):
  assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_char_transformer_trains_samples_and_plots(tmp_path, capsys):
  argv = ["--steps", "4", "--blocks", "2", "--dim", "16", "--heads", "2", "--context", "16"]
  argv += ["--batch-size", "4", "--eval-every", "2", "--sample-length", "6", "--out", str(tmp_path)]
  result = run_example("char_transformer", argv)
  assert_png(result["plot"])
  model = result["model"]
  # the blocks are one vmapped stack, each block with its own dropout stream (split_rngs)
  assert model.blocks.up.kernel.shape == (2, 16, 64)
  keys = jax.random.key_data(model.blocks.drop.rngs.key[...])
  assert keys.shape[0] == 2 and not (keys[0] == keys[1]).all()
  # two dropout draws per block per training step (after attention and after the MLP)
  assert model.blocks.drop.rngs.count[...].tolist() == [8, 8]
  val = [v for _, v in result["history"]["val"]]
  assert [s for s, _ in result["history"]["val"]] == [0, 2, 4] and val[-1] < val[0]
  assert result["sample"].startswith("The ") and len(result["sample"]) == 4 + 6
  assert "sample:" in capsys.readouterr().out


def test_ensemble_graph_and_tree_modes_train_the_same_numbers(tmp_path):
  argv = ["--steps", "5", "--members", "3", "--hidden", "8"]
  graph = run_example("ensemble", [*argv, "--mode", "graph", "--out", str(tmp_path / "g")])
  tree = run_example("ensemble", [*argv, "--mode", "tree", "--out", str(tmp_path / "t")])
  assert_png(graph["plot"])
  assert graph["predictions"].shape == (3, 201)
  np.testing.assert_allclose(graph["losses"], tree["losses"], rtol=1e-6)
  np.testing.assert_allclose(graph["predictions"], tree["predictions"], rtol=1e-5, atol=1e-6)
  assert graph["losses"][-1] < graph["losses"][0]
  # members differ (split_rngs) and the shared statistics stayed unstacked
  kernels = graph["model"].members.layers.layers[0].kernel[...]
  assert kernels.shape == (3, 1, 8) and not np.allclose(kernels[0], kernels[1])
  assert graph["model"].x_mean.shape == (1,)


def test_mesh_training_keeps_parameters_sharded(capsys):
  result = run_example("mesh_training", ["--steps", "3", "--hidden", "64", "--batch-size", "16"])
  model, mesh = result["model"], result["mesh"]
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  kernel = model.up1.kernel[...]
  assert kernel.sharding.spec == P(None, "model") and kernel.sharding.shard_shape(kernel.shape) == (
    64,
    16,
  )
  assert model.down1.kernel[...].sharding.shard_shape((64, 16)) == (16, 16)
  assert len(result["losses"]) == 3 and np.isfinite(result["losses"]).all()
  assert "kept its sharding through 3 steps" in capsys.readouterr().out


def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
  pytest.importorskip("orbax.checkpoint")
  argv = ["--steps", "6", "--stop-at", "3", "--ckpt-dir", str(tmp_path / "ckpt")]
  result = run_example("checkpoint_resume", [*argv, "--out", str(tmp_path)])
  assert result["resumed_at"] == 3 and len(result["resumed"]) == 6
  assert result["max_abs_difference"] == 0.0 and result["resumed"] == result["reference"]
  assert (tmp_path / "ckpt" / "step_3" / "model").is_dir()
  assert_png(result["plot"])
