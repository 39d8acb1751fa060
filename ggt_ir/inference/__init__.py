"""Inference utilities shared by every zoo model: tiling, self-ensemble, the ``ggt-ir restore`` command."""
