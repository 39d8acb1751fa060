"""Offline weights for pyiqa metrics: the catalogue of what each metric loads, and where it is read from.

pyiqa downloads a metric's weights the first time the metric is created; without network that
fails deep inside pyiqa after a long wait. Here every metric is created inside
:func:`offline_weights`, which

* points pyiqa and torch.hub at one local **weights folder** (``--weights-dir`` / ``eval.weights_dir``
  / ``$GGT_IR_WEIGHTS``; default: torch.hub's own folder, ``$TORCH_HOME/hub``, so an existing pyiqa
  cache keeps working), laid out like torch.hub's folder::

      <weights>/pyiqa/<file>          pyiqa's own files   (LPIPS_v0.1_alex-df73285e.pth, ...)
      <weights>/checkpoints/<file>    torchvision backbones (alexnet-owt-7be5be79.pth, vgg16-397923af.pth)
      <weights>/clip/<file>           OpenAI CLIP models  (RN50.pt for clipiqa, ViT-B-32.pt for afine_*)
      <weights>/huggingface/<org>/<name>/<file>
                                      Hub files that timm reads (backbones of topiq_nr, maniqa-pipal, nima):
                                      one plain file, e.g. huggingface/timm/resnet50.a1_in1k/model.safetensors
                                      (what ``hf download timm/resnet50.a1_in1k model.safetensors --local-dir
                                      <weights>/huggingface/timm/resnet50.a1_in1k`` writes). A Hugging Face
                                      cache (``<weights>/huggingface/models--timm--.../snapshots/...``, or the
                                      default ``$HF_HOME/hub``) is read as well.

* turns every download attempt into a :class:`MissingWeightsError` that names the metric, the file,
  the URL it comes from and the path to put it at -- at once, with no network access.

:data:`KNOWN_WEIGHTS` is the one catalogue of metric weights; ``ggt-ir weights {list,check,fetch}``
(:mod:`ggt_ir.assets.weights`) reads it, and ``ggt-ir eval --check-weights`` is that command's ``check``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

ENV_VAR = "GGT_IR_WEIGHTS"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
PYIQA_REPO = "chaofengc/IQA-PyTorch-Weights"
PYIQA_URL = f"{HF_DEFAULT_ENDPOINT}/{PYIQA_REPO}/resolve/main/"
TV_URL = "https://download.pytorch.org/models/"
CLIP_URL = "https://openaipublic.azureedge.net/clip/models/"
FACEXLIB_URL = "https://github.com/xinntao/facexlib/releases/download/"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric loads.

    ``where`` is the sub-folder of the weights folder its loader reads (``pyiqa``, ``checkpoints``, ``clip``),
    or ``hub``: a file of a Hugging Face Hub repo that timm reads through ``hf_hub_download`` (``repo_id`` +
    ``name``), or ``hub-model``: a whole Hub repo that transformers reads from the Hugging Face cache
    (``repo_id``; ``name`` lists what it holds).
    """

    where: str
    name: str
    url: str
    repo_id: str = ""
    sha256: str = ""  # when the source publishes the full hash (CLIP's URLs carry it)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.repo_id}/{self.name}" if self.where == "hub" else (
            self.repo_id if self.where == "hub-model" else f"{self.where}/{self.name}")


def _pyiqa(name: str) -> WeightFile:
    return WeightFile("pyiqa", name, PYIQA_URL + name, repo_id=PYIQA_REPO)


def _tv(name: str) -> WeightFile:
    return WeightFile("checkpoints", name, TV_URL + name)


def _clip(name: str, sha256: str) -> WeightFile:
    return WeightFile("clip", name, f"{CLIP_URL}{sha256}/{name}", sha256=sha256)


def _timm(repo_id: str) -> WeightFile:
    return WeightFile("hub", "model.safetensors", f"{HF_DEFAULT_ENDPOINT}/{repo_id}/resolve/main/model.safetensors",
                      repo_id=repo_id)


_RN50 = _clip("RN50.pt", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762")
_VITB32 = _clip("ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af")
_VITL14 = _clip("ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836")
_RES50 = _timm("timm/resnet50.a1_in1k")
_VITB8 = _timm("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k")

# What the metrics of pyiqa 0.1.16 load (traced by running them; URLs and hashes read from pyiqa's arch
# files). Used by `ggt-ir weights`, and to list every missing file at
# once; a metric not listed here is still guarded (its first missing file is reported when it is created).
KNOWN_WEIGHTS: dict[str, list[WeightFile]] = {
    "lpips": [_tv("alexnet-owt-7be5be79.pth"), _pyiqa("LPIPS_v0.1_alex-df73285e.pth")],
    "lpips-vgg": [_tv("vgg16-397923af.pth"), _pyiqa("LPIPS_v0.1_vgg-a78928a0.pth")],
    "dists": [_tv("vgg16-397923af.pth"), _pyiqa("DISTS_weights-f5e65c96.pth")],
    "musiq": [_pyiqa("musiq_koniq_ckpt-e95806b9.pth")],
    "maniqa": [_VITB8, _pyiqa("ckpt_koniq10k.pt")],
    "maniqa-pipal": [_VITB8, _pyiqa("MANIQA_PIPAL-ae6d356b.pth")],
    "clipiqa": [_RN50],
    "clipiqa+": [_RN50, _pyiqa("CLIP-IQA+_learned_prompts-603f3273.pth")],
    "clipiqa+_vitL14_512": [_VITL14, _pyiqa("CLIPIQA+_ViTL14_512-e66488f2.pth")],
    "topiq_nr": [_RES50, _pyiqa("cfanet_nr_koniq_res50-9a73138b.pth")],
    "topiq_fr": [_RES50, _pyiqa("cfanet_fr_kadid_res50-2c4cc61d.pth")],
    "nima": [_timm("timm/inception_resnet_v2.tf_in1k"), _pyiqa("NIMA_InceptionV2_ava-b0c77c00.pth")],
    "brisque": [_pyiqa("brisque_svm_weights.pth")],
    "fid": [_pyiqa("pt_inception-2015-12-05-6726825d.pth")],
    "afine_nr": [_VITB32, _pyiqa("afine.pth")],
    "afine_fr": [_VITB32, _pyiqa("afine.pth")],
    "afine_all": [_VITB32, _pyiqa("afine.pth")],
    "qalign": [WeightFile("hub-model", "config.json, tokenizer, model weights (~8B parameters, ~16 GB in fp16)",
                          f"{HF_DEFAULT_ENDPOINT}/q-future/one-align", repo_id="q-future/one-align",
                          note="also needs `pip install icecream`; read by transformers from the Hugging Face cache")],
    # niqe: pyiqa's file if present, else the parameters bundled with basicsr (see metrics.py)
    "niqe": [_pyiqa("niqe_modelparameters.mat")],
}
OPTIONAL = {("niqe", "niqe_modelparameters.mat")}  # (metric, file) that have a local fallback


def source_url(wf: WeightFile) -> str:
    """Where to download ``wf`` from: its URL, with the Hub's address replaced by ``$HF_ENDPOINT`` when that is
    set (pyiqa builds its own URLs with ``hf_hub_url``, which honours it too)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    if endpoint and wf.url.startswith(HF_DEFAULT_ENDPOINT + "/"):
        return endpoint + wf.url[len(HF_DEFAULT_ENDPOINT):]
    return wf.url


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
            f"`ggt-ir weights fetch -opt <file>` downloads what is missing on a machine with network access, "
            f"`ggt-ir weights check -opt <file>` lists every file the metrics need.)"
        )


def resolve_weights_dir(option: str | os.PathLike | None = None) -> Path:
    """The weights folder: the option, else ``$GGT_IR_WEIGHTS``, else torch.hub's folder."""
    if option:
        return Path(option).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir())


def hub_file_path(weights_dir: Path, repo_id: str, filename: str) -> Path:
    """Where a single Hub file goes in the weights folder (the ``--local-dir`` layout of ``hf download``)."""
    return Path(weights_dir) / "huggingface" / repo_id / filename


def target_path(wf: WeightFile, weights_dir: Path) -> Path:
    """The path to put ``wf`` at so that its loader finds it (for ``hub-model``: the HF cache folder)."""
    if wf.where == "hub":
        return hub_file_path(weights_dir, wf.repo_id, wf.name)
    if wf.where == "hub-model":
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE) / ("models--" + wf.repo_id.replace("/", "--"))
    return Path(weights_dir) / wf.where / wf.name


def find_file(wf: WeightFile, weights_dir: Path) -> Path | None:
    """Where ``wf`` is on this machine (what its loader would read), or None. Never touches the network."""
    if wf.where == "hub":
        found = _hf_local(wf.repo_id, wf.name, Path(weights_dir))
        return Path(found) if found else None
    if wf.where == "hub-model":
        return _hf_snapshot_local(wf.repo_id)
    p = Path(weights_dir) / wf.where / wf.name
    return p if p.is_file() else None


def expected_path(weights_dir: Path, sub: str, filename: str) -> Path:
    """Kept for callers of the old table layout: ``sub`` is a weights sub-folder or ``huggingface`` (then
    ``filename`` is ``<repo id>/<file>``)."""
    if sub == "huggingface":
        repo, _, fname = filename.rpartition("/")
        return hub_file_path(weights_dir, repo, fname)
    return Path(weights_dir) / sub / filename


def missing_files(metric: str, weights_dir: Path) -> list[tuple[str, str, Path]]:
    """(file, source URL, path to put it at) for each known file of ``metric`` that is not on this machine."""
    return [(wf.label if wf.where.startswith("hub") else wf.name, source_url(wf), target_path(wf, weights_dir))
            for wf in KNOWN_WEIGHTS.get(metric, []) if find_file(wf, weights_dir) is None]


def _hf_local(repo_id: str, filename: str, weights_dir: Path, **kwargs) -> str | None:
    """A Hub file from the weights folder -- ``<weights>/huggingface/<repo>/<file>``, or a Hugging Face cache in
    ``<weights>/huggingface`` -- or from the default Hugging Face cache; never from the network."""
    flat = hub_file_path(weights_dir, repo_id, filename)
    if flat.is_file():
        return str(flat)
    from huggingface_hub import hf_hub_download

    for k in ("local_files_only", "cache_dir", "library_name", "library_version", "force_download", "token"):
        kwargs.pop(k, None)
    for cache in (Path(weights_dir) / "huggingface", None):
        try:
            return hf_hub_download(repo_id, filename, cache_dir=str(cache) if cache else None,
                                   local_files_only=True, **kwargs)
        except Exception:  # LocalEntryNotFoundError and friends
            continue
    return None


def _hf_snapshot_local(repo_id: str) -> Path | None:
    """A complete cached snapshot of a model repo in the default Hugging Face cache (transformers reads it)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, IncompleteSnapshotError
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
            src = f"{HF_DEFAULT_ENDPOINT}/{repo_id}/resolve/main/{filename}"
            raise MissingWeightsError(metric, f"{repo_id}/{filename}", src,
                                      hub_file_path(weights_dir, repo_id, filename), weights_dir)
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
    try:  # A-FINE's CLIP loader reads ~/.cache/clip; read <weights>/clip like the other CLIP metrics
        import pyiqa.archs.afineclip_model as afine_clip

        own_download = afine_clip._download  # noqa: SLF001
        patches.append((afine_clip, "_download", lambda url, root: own_download(url, str(weights_dir / "clip"))))
    except ImportError:  # pragma: no cover - optional CLIP dependencies
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


__all__ = ["ENV_VAR", "KNOWN_WEIGHTS", "WeightFile", "MissingWeightsError", "resolve_weights_dir", "offline_weights",
           "missing_files", "find_file", "target_path", "source_url", "hub_file_path"]
