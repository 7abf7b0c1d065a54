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
    *session.posargs,
    env=XLA,
  )


@nox.session
def doctests(session):
  session.install("-e", ".[test]")
  session.run("python", "-m", "pytest", "pynnx", "--doctest-modules", env=XLA)


@nox.session
def docs(session):
  session.install("-e", ".[docs]")
  session.run("mkdocs", "build", "--strict")


@nox.session
def examples(session):
  session.install("-e", ".[examples]")
  session.run("python", "examples/digits.py")
  session.run("python", "examples/equinox_interop.py")


@nox.session
def bench(session):
  session.install("-e", ".[test]")
  session.run("python", "benchmarks/overhead.py", *session.posargs)
  session.run("python", "benchmarks/trace_writes.py")
  session.run("python", "benchmarks/typed_overhead.py")
