"""Where the frozen networks of the perceptual losses find their weights: local files only, never a download.

One **weights folder**, laid out like torch.hub's (the layout ``ggt_ir/eval/weights.py`` uses for pyiqa's
metrics, so one folder serves training and evaluation)::

    <weights>/checkpoints/<file>   torchvision ImageNet backbones: vgg19-dcbb9e9d.pth (PerceptualLoss),
                                   vgg16-397923af.pth (LPIPS-VGG, DISTS), alexnet-owt-7be5be79.pth (LPIPS-Alex)
    <weights>/pyiqa/<file>         the learned layers of LPIPS / DISTS (pyiqa's files):
                                   LPIPS_v0.1_vgg-a78928a0.pth, LPIPS_v0.1_alex-df73285e.pth, DISTS_weights-f5e65c96.pth

``<weights>`` is the loss's ``weights_dir`` option, else ``$GGT_IR_WEIGHTS``, else torch.hub's folder
(``$TORCH_HOME/hub``, default ``~/.cache/torch/hub``), so a torchvision or pyiqa cache that already exists is used
as is. An explicit file option (``vgg_path``, ``lin_path``, ...) overrides the folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ENV_VAR = "GGT_IR_WEIGHTS"
TV_URL = "https://download.pytorch.org/models/"
PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(torch.hub.get_dir())


def torchvision_file(arch: str) -> str:
    """File name of torchvision's ImageNet weights for ``arch`` (``vgg19`` -> ``vgg19-dcbb9e9d.pth``)."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    return os.path.basename(enum.IMAGENET1K_V1.url)


def local_file(name: str, sub: str, explicit: str | None, folder: str | None, what: str, url: str) -> Path:
    """``explicit`` if given, else ``<weights>/<sub>/<name>``; a missing file is an error saying where to put it."""
    path = Path(explicit).expanduser() if explicit else weights_dir(folder) / sub / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} needs the weight file {path}, which does not exist. Download {url} on a machine with network "
            f"access and put it there, or point the loss's weights_dir (a folder with checkpoints/ and pyiqa/, "
            f"also ${ENV_VAR}) or its explicit file option at it.")
    return path


def torchvision_features(arch: str, path: Path) -> nn.Sequential:
    """The ``features`` part of a torchvision classifier (vgg*, alexnet) with weights from ``path``; the
    classifier is never materialised."""
    import torchvision.models as tvm

    with torch.device("meta"):
        features = tvm.get_model(arch, weights=None).features
    features = features.to_empty(device="cpu")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    try:
        features.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"{path}: not torchvision's {arch} weights ({str(e).splitlines()[0]})") from None
    return features


def pair_features(features, x: torch.Tensor, y: torch.Tensor):
    """``features(x), features(y)`` through a frozen network (``features`` returns a list or a dict of maps).

    When ``x`` carries a gradient, ``y`` (the target) goes through without a graph: a shared batch would also
    back-propagate through the target's half, wasted work (VGG19 loss at 4x128² on CPU: 1.32 s vs 0.90 s).
    Otherwise both go in one batched pass."""
    if torch.is_grad_enabled() and x.requires_grad and not y.requires_grad:
        fx = features(x.float())
        with torch.no_grad():
            return fx, features(y.float())
    b = x.shape[0]
    both = features(torch.cat([x, y]).float())
    if isinstance(both, dict):
        return {k: v[:b] for k, v in both.items()}, {k: v[b:] for k, v in both.items()}
    return [f[:b] for f in both], [f[b:] for f in both]
