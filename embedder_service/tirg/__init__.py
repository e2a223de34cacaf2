"""Composed image+text retrieval on CSS-like scenes (TIRG, seed 003): the
scene generator, the networks, their training and evaluation."""
