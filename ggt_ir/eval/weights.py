"""Offline weights for pyiqa metrics.

pyiqa downloads a metric's weights the first time the metric is created; without network that
fails deep inside pyiqa after a long wait. Here every metric is created inside
:func:`offline_weights`, which

* points pyiqa and torch.hub at one local **weights folder** (``--weights-dir`` / ``eval.weights_dir``
  / ``$GGT_IR_WEIGHTS``; default: torch.hub's own folder, ``$TORCH_HOME/hub``, so an existing pyiqa
  cache keeps working), laid out like torch.hub's folder::

      <weights>/pyiqa/<file>          pyiqa's own files   (LPIPS_v0.1_alex-df73285e.pth, ...)
      <weights>/checkpoints/<file>    torchvision backbones (alexnet-owt-7be5be79.pth, vgg16-397923af.pth)
      <weights>/clip/<file>           OpenAI CLIP models  (RN50.pt)
      <weights>/huggingface/          a Hugging Face hub cache for timm backbones
                                      (models--timm--resnet50.a1_in1k/snapshots/<rev>/model.safetensors)

* turns every download attempt into a :class:`MissingWeightsError` that names the metric, the file,
  the URL it comes from and the path to put it at -- at once, with no network access.

``ggt-ir eval --check-weights`` lists what the configured metrics need and what is missing.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

ENV_VAR = "GGT_IR_WEIGHTS"
PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
TV_URL = "https://download.pytorch.org/models/"
CLIP_URL = "https://openaipublic.azureedge.net/clip/models/"

# What the common metrics of pyiqa 0.1.16 load: (sub-folder of the weights folder, file name, URL).
# Sub-folder "huggingface" means a timm backbone from the Hugging Face hub (repo id in the URL).
# Used for --check-weights and to list every missing file at once; a metric not listed here is
# still guarded (its first missing file is reported when it is created).
KNOWN_WEIGHTS: dict[str, list[tuple[str, str, str]]] = {
    "lpips": [("checkpoints", "alexnet-owt-7be5be79.pth", TV_URL + "alexnet-owt-7be5be79.pth"),
              ("pyiqa", "LPIPS_v0.1_alex-df73285e.pth", PYIQA_URL + "LPIPS_v0.1_alex-df73285e.pth")],
    "lpips-vgg": [("checkpoints", "vgg16-397923af.pth", TV_URL + "vgg16-397923af.pth"),
                  ("pyiqa", "LPIPS_v0.1_vgg-a78928a0.pth", PYIQA_URL + "LPIPS_v0.1_vgg-a78928a0.pth")],
    "dists": [("checkpoints", "vgg16-397923af.pth", TV_URL + "vgg16-397923af.pth"),
              ("pyiqa", "DISTS_weights-f5e65c96.pth", PYIQA_URL + "DISTS_weights-f5e65c96.pth")],
    "musiq": [("pyiqa", "musiq_koniq_ckpt-e95806b9.pth", PYIQA_URL + "musiq_koniq_ckpt-e95806b9.pth")],
    "maniqa": [("huggingface", "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/model.safetensors",
                "https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"),
               ("pyiqa", "ckpt_koniq10k.pt", PYIQA_URL + "ckpt_koniq10k.pt")],
    "maniqa-pipal": [("huggingface", "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/model.safetensors",
                      "https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"),
                     ("pyiqa", "MANIQA_PIPAL-ae6d356b.pth", PYIQA_URL + "MANIQA_PIPAL-ae6d356b.pth")],
    "clipiqa": [("clip", "RN50.pt", CLIP_URL + "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")],
    "clipiqa+": [("clip", "RN50.pt", CLIP_URL + "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"),
                 ("pyiqa", "CLIP-IQA+_learned_prompts-603f3273.pth", PYIQA_URL + "CLIP-IQA+_learned_prompts-603f3273.pth")],
    "topiq_nr": [("huggingface", "timm/resnet50.a1_in1k/model.safetensors", "https://huggingface.co/timm/resnet50.a1_in1k"),
                 ("pyiqa", "cfanet_nr_koniq_res50-9a73138b.pth", PYIQA_URL + "cfanet_nr_koniq_res50-9a73138b.pth")],
    "topiq_fr": [("huggingface", "timm/resnet50.a1_in1k/model.safetensors", "https://huggingface.co/timm/resnet50.a1_in1k"),
                 ("pyiqa", "cfanet_fr_kadid_res50-2c4cc61d.pth", PYIQA_URL + "cfanet_fr_kadid_res50-2c4cc61d.pth")],
    "brisque": [("pyiqa", "brisque_svm_weights.pth", PYIQA_URL + "brisque_svm_weights.pth")],
    # niqe: pyiqa's file if present, else the parameters bundled with basicsr (see metrics.py)
    "niqe": [("pyiqa", "niqe_modelparameters.mat", PYIQA_URL + "niqe_modelparameters.mat")],
}


class MissingWeightsError(RuntimeError):
    """A metric needs a weight file that is not in the local weights folder."""

    def __init__(self, metric: str, filename: str, source: str, expected: Path | str, weights_dir: Path | str):
        self.metric, self.filename, self.source = metric, filename, source
        self.expected, self.weights_dir = Path(expected), Path(weights_dir)
        super().__init__(
            f"metric '{metric}' needs the weight file '{filename}', which is not in the local weights folder.\n"
            f"  it comes from: {source}\n"
            f"  put it at:     {expected}\n"
            f"  (weights folder {weights_dir}: set with --weights-dir, eval.weights_dir or ${ENV_VAR}; "
            f"download the file on a machine with network access and copy it there. "
            f"`ggt-ir eval --check-weights -opt <file>` lists every file the metrics need.)"
        )


def resolve_weights_dir(option: str | os.PathLike | None = None) -> Path:
    """The weights folder: the option, else ``$GGT_IR_WEIGHTS``, else torch.hub's folder."""
    if option:
        return Path(option).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir())


def expected_path(weights_dir: Path, sub: str, filename: str) -> Path:
    if sub == "huggingface":
        repo, _, fname = filename.rpartition("/")
        return weights_dir / "huggingface" / ("models--" + repo.replace("/", "--")) / "snapshots" / "<revision>" / fname
    return weights_dir / sub / filename


def missing_files(metric: str, weights_dir: Path) -> list[tuple[str, str, Path]]:
    """(file, source URL, expected path) for each known file of ``metric`` not present locally."""
    out = []
    for sub, filename, url in KNOWN_WEIGHTS.get(metric, []):
        if sub == "huggingface":
            repo, _, fname = filename.rpartition("/")
            if _hf_local(repo, fname, weights_dir) is None:
                out.append((filename, url, expected_path(weights_dir, sub, filename)))
        elif not (weights_dir / sub / filename).is_file():
            out.append((filename, url, weights_dir / sub / filename))
    return out


def _hf_local(repo_id: str, filename: str, weights_dir: Path, **kwargs) -> str | None:
    """A Hub file from ``<weights>/huggingface`` or the default HF cache, never from the network."""
    from huggingface_hub import hf_hub_download

    kwargs.pop("local_files_only", None)
    kwargs.pop("cache_dir", None)
    kwargs.pop("library_name", None)
    kwargs.pop("library_version", None)
    for cache in (weights_dir / "huggingface", None):
        try:
            return hf_hub_download(repo_id, filename, cache_dir=str(cache) if cache else None,
                                   local_files_only=True, **kwargs)
        except Exception:  # LocalEntryNotFoundError and friends
            continue
    return None


def _where(url: str, weights_dir: Path) -> tuple[str, Path]:
    name = os.path.basename(urlparse(url).path)
    if url.startswith(TV_URL):
        return name, weights_dir / "checkpoints" / name
    if url.startswith(CLIP_URL):
        return name, weights_dir / "clip" / name
    return name, weights_dir / "pyiqa" / name


@contextlib.contextmanager
def offline_weights(metric: str, weights_dir: Path) -> Iterator[None]:
    """Create pyiqa metrics inside this: files come from ``weights_dir``; downloads raise
    :class:`MissingWeightsError`. Not thread-safe (it patches module attributes for its duration)."""
    import torch.hub
    import urllib.request

    import pyiqa.utils.download_util as du

    weights_dir = Path(weights_dir)

    def no_download(url, dst=None, *args, **kwargs):
        name, where = _where(url, weights_dir)
        if dst:
            name, where = os.path.basename(dst), Path(dst)
        raise MissingWeightsError(metric, name, url, where, weights_dir)

    def no_urlopen(url, *args, **kwargs):
        url = getattr(url, "full_url", url)
        name, where = _where(str(url), weights_dir)
        raise MissingWeightsError(metric, name, str(url), where, weights_dir)

    def hf_download(repo_id, filename, *args, **kwargs):
        path = _hf_local(repo_id, filename, weights_dir, **kwargs)
        if path is None:
            src = f"https://huggingface.co/{repo_id} (file {filename})"
            raise MissingWeightsError(metric, f"{repo_id}/{filename}", src,
                                      expected_path(weights_dir, "huggingface", f"{repo_id}/{filename}"), weights_dir)
        return path

    patches: list[tuple[object, str, object]] = [
        (torch.hub, "download_url_to_file", no_download),
        (du, "download_url_to_file", no_download),
        (du, "DEFAULT_CACHE_DIR", str(weights_dir / "pyiqa")),
        (urllib.request, "urlopen", no_urlopen),
    ]
    try:
        import timm.models._hub as timm_hub

        patches.append((timm_hub, "hf_hub_download", hf_download))
    except ImportError:  # pragma: no cover - timm is a pinned dependency
        pass
    try:
        import huggingface_hub.constants as hfc

        patches.append((hfc, "HF_HUB_OFFLINE", True))
    except ImportError:  # pragma: no cover
        pass
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    old_hub_dir = torch.hub._hub_dir  # noqa: SLF001  (restored exactly, None included)
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        torch.hub.set_dir(str(weights_dir))
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        torch.hub._hub_dir = old_hub_dir  # noqa: SLF001


__all__ = ["ENV_VAR", "KNOWN_WEIGHTS", "MissingWeightsError", "resolve_weights_dir", "offline_weights",
           "missing_files"]
