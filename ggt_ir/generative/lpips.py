"""LPIPS-VGG for the generative steps' ``train.lpips_opt``: the implementation moved to
:mod:`ggt_ir.losses.lpips` (the project's one LPIPS, also behind ``LPIPSLoss``); these names stay importable."""
from ggt_ir.losses.lpips import (  # noqa: F401
    CHANNELS,
    LPIPS_FILE,
    LPIPS_URL,
    VGG_FILE,
    VGG_URL,
    LPIPSVGG,
    lpips_available,
    lpips_files,
)
from ggt_ir.losses.weights import weights_dir  # noqa: F401
