"""Developer tasks: `nox -s lint types tests typecheck doctests docs examples bench`."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"
XLA = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


@nox.session
def lint(session):
  session.install("ruff")
  session.run("ruff", "check", "pynnx", "tests", "benchmarks", "examples")
  session.run("ruff", "format", "--check", "pynnx", "tests", "benchmarks", "examples")


@nox.session
def types(session):
  session.install("-e", ".[dev]")
  session.run("mypy", "pynnx")


@nox.session
def tests(session):
  session.install("-e", ".[test]")
  session.run("python", "-m", "pytest", "tests", env=XLA)
  session.run(
    "python",
    "-m",
    "pytest",
    "../shared/acceptance",
    "-p",
    "no:cacheprovider",
    "-o",
    "addopts=",
    env=XLA,
    success_codes=[0, 5],
  )


@nox.session
def typecheck(session):
  """The test suite under jaxtyping's pytest plugin: every pynnx function and method with
  jaxtyping/standard annotations is checked by beartype at call time."""
  session.install("-e", ".[test,typecheck]")
  session.run(
    "python",
    "-m",
    "pytest",
    "tests",
    "--jaxtyping-packages=pynnx,beartype.beartype",
    "-p",
    "no:cacheprovider",
    # tests marked no_typecheck pass mistyped arguments on purpose (beartype rejects the
    # call first, a correct outcome with another error class) or measure the stack depth
    "-m",
    "not no_typecheck",
    *session.posargs,
    env=XLA,
  )


@nox.session
def doctests(session):
  session.install("-e", ".[test]")
  session.run("python", "-m", "pytest", "pynnx", "--doctest-modules", env=XLA)


@nox.session
def docs(session):
  """Builds the site strictly and runs every code block of every page."""
  session.install("-e", ".[docs,test]")
  session.run("mkdocs", "build", "--strict")
  session.run("python", "-m", "pytest", "tests/test_docs.py", "-p", "no:cacheprovider", env=XLA)


EXAMPLES = [
  "digits",
  "char_transformer",
  "ensemble",
  "mesh_training",
  "checkpoint_resume",
]


@nox.session
def examples(session):
  """Runs every example at full size (the test suite runs them tiny)."""
  session.install("-e", ".[examples]")
  for name in session.posargs or EXAMPLES:
    session.run("python", f"examples/{name}.py", "--no-progress")
  if not session.posargs:
    session.run("python", "examples/equinox_interop.py")


@nox.session
def bench(session):
  """Regenerates the overhead table and plot used by docs/performance.md."""
  session.install("-e", ".[test]")
  session.run(
    "python",
    "benchmarks/overhead.py",
    "--plot",
    "docs/img/overhead.png",
    "--table",
    "benchmarks/results/overhead_table.md",
    *session.posargs,
  )
  session.run("python", "benchmarks/trace_writes.py")
  session.run("python", "benchmarks/typed_overhead.py")
