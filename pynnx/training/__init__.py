"""Training utilities: Optimizer (optax) and metrics."""

__all__: list[str] = []
