"""The examples in examples/ run end to end (with few epochs, to stay fast)."""

import importlib.util
import pathlib

import jax
import pytest

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
