"""Work-arounds for stale third-party packages. Import before the first ``basicsr`` import.

basicsr 1.4.2 (the last PyPI release) imports ``torchvision.transforms.functional_tensor``, which
torchvision removed in 0.17; every ``import basicsr...`` then fails. The module moved to a private
name with the same ``rgb_to_grayscale``; alias it.
"""
import sys


def patch_basicsr_imports() -> None:
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
    except ModuleNotFoundError:
        import torchvision.transforms._functional_tensor as _ft

        sys.modules["torchvision.transforms.functional_tensor"] = _ft
