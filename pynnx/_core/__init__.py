"""The pure pytree world: Variables, Pytree/Module, State, filters, Rngs, tree split/merge."""
