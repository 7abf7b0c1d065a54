"""Graph mode: shared-reference aware split/merge in front of the tree machinery."""
