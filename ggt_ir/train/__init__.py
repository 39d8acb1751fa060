"""Training: the generic trainer loop, the per-family steps, checkpoints and EMA."""
