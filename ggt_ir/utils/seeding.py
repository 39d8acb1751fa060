"""Seed every global generator for one block, then give the caller its random state back."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None):
    """Seed Python's ``random``, NumPy's global and torch's CPU (and ``device``'s CUDA) generators;
    restore them on exit. For code that draws from global generators (basicsr degradations, pyiqa crops)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
