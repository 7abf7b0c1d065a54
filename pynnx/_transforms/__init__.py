"""The lifted transforms (see README.md in this folder for the lift)."""

__all__: list[str] = []
