"""Random weight files where the offline loaders expect them (tests, benchmarks; scores are meaningless).

* :func:`write_random_weights` -- pyiqa metrics (lpips, lpips-vgg, dists, musiq) in the weights-folder
  layout of :mod:`ggt_ir.eval.weights` (``<weights>/checkpoints/``, ``<weights>/pyiqa/``);
* :func:`save_random_lpips` -- the LPIPS-VGG training loss of :mod:`ggt_ir.generative.lpips` (same layout).
"""
from __future__ import annotations

import os
from pathlib import Path


def write_random_weights(metric: str, weights_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write **randomly initialised** weight files for ``metric`` where pyiqa expects them.

    For tests and timing only: scores computed with them are meaningless. Supported: lpips,
    lpips-vgg, dists (torchvision backbone + pyiqa file) and musiq (one pyiqa file). The unused
    classifier heads of the torchvision backbones are stored as stride-0 tensors, so the files stay
    small (the features are real random tensors).
    """
    import torch
    import torchvision

    from ggt_ir.eval.weights import offline_weights

    weights_dir = Path(weights_dir)
    torch.manual_seed(seed)
    written = []

    def save(sd: dict, sub: str, name: str) -> None:
        dst = weights_dir / sub / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, dst)
        written.append(dst)

    def backbone(builder, name: str) -> None:
        if (weights_dir / "checkpoints" / name).is_file():
            return
        with torch.device("meta"):
            shapes = {k: (v.shape, v.dtype) for k, v in builder(weights=None).state_dict().items()}
        sd = {}
        for k, (shape, dtype) in shapes.items():
            if k.startswith("classifier."):
                sd[k] = torch.zeros(1, dtype=dtype).expand(shape)
            elif k.endswith("bias"):
                sd[k] = torch.zeros(shape, dtype=dtype)
            else:
                fan_in = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
                sd[k] = torch.randn(shape, dtype=dtype) * (2.0 / fan_in) ** 0.5
        save(sd, "checkpoints", name)

    def heads(build, prefixes: tuple[str, ...], sub: str, name: str) -> None:
        """The metric's own learned layers (after its backbone exists), seeded, so that every process
        that loads the file gets the same network."""
        with offline_weights(metric, weights_dir):
            torch.manual_seed(seed)
            net = build()
        sd = {k: v.abs() for k, v in net.state_dict().items() if k.startswith(prefixes)}
        save(sd, sub, name)

    if metric in ("lpips", "lpips-vgg"):
        from pyiqa.archs.lpips_arch import LPIPS

        vgg = metric == "lpips-vgg"
        if vgg:
            backbone(torchvision.models.vgg16, "vgg16-397923af.pth")
        else:
            backbone(torchvision.models.alexnet, "alexnet-owt-7be5be79.pth")
        heads(lambda: LPIPS(pretrained=False, net="vgg" if vgg else "alex"), ("lin",), "pyiqa",
              "LPIPS_v0.1_vgg-a78928a0.pth" if vgg else "LPIPS_v0.1_alex-df73285e.pth")
    elif metric == "dists":
        from pyiqa.archs.dists_arch import DISTS

        backbone(torchvision.models.vgg16, "vgg16-397923af.pth")
        heads(lambda: DISTS(pretrained=False), ("alpha", "beta"), "pyiqa", "DISTS_weights-f5e65c96.pth")
    elif metric == "musiq":
        from pyiqa.archs.musiq_arch import MUSIQ

        # half precision keeps the file small; load_state_dict converts it back to float32
        sd = {k: v.half() if v.is_floating_point() else v for k, v in MUSIQ(pretrained=False).state_dict().items()}
        save(sd, "pyiqa", "musiq_koniq_ckpt-e95806b9.pth")
    else:
        raise ValueError(f"no random placeholder weights for metric {metric!r}; "
                         "supported: lpips, lpips-vgg, dists, musiq")
    return written


def save_random_lpips(folder: str | Path, seed: int = 0) -> dict:
    """Random VGG16 + LPIPS linear-layer files where :mod:`ggt_ir.generative.lpips` expects them."""
    import torch
    from torchvision.models import vgg16

    from ggt_ir.generative.lpips import CHANNELS, LPIPS_FILE, VGG_FILE

    folder = Path(folder)
    torch.manual_seed(seed)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "pyiqa").mkdir(parents=True, exist_ok=True)
    vgg = folder / "checkpoints" / VGG_FILE
    lin = folder / "pyiqa" / LPIPS_FILE
    torch.save(vgg16(weights=None).state_dict(), vgg)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate(CHANNELS)}, lin)
    return {"vgg": vgg, "lin": lin}
