"""The README's quickstart runs as written (keeps the README true)."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs_and_trains():
  code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
  namespace: dict = {}
  # optax's adam mixes Python floats and int32 internally: run as users do (standard
  # promotion), not under the suite's strict setting.
  with jax.numpy_dtype_promotion("standard"):
    exec(compile(code, str(README), "exec"), namespace)
  # 100 steps of adam fit the constant target
  assert float(namespace["loss"]) < 0.05


def test_readme_setup_commands_match_ci():
  text = README.read_text()
  ci = (README.parent / ".ci" / "run").read_text()
  assert 'python -m pip install -e ".[test]" && python -m pytest' in text
  assert 'python -m pip install -q -e ".[test]" && python -m pytest' in ci
  assert 'python -m pip install -e ".[examples]" && python examples/digits.py' in text
