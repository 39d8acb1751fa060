"""Build the embedded demo dataset: a small GGT-like paired set made from real photographs.

The photos ship with scikit-image (no download). Each HQ crop gets a plausible degradation of
one of GGT-100K's six categories; the result is written in our GGT layout::

    <out>/GGT-demo/{train,val,test}/{general,rain,haze,snow,low-light,old-photo}/{LQ,GT}/<name>.png

Everything is seeded, so the same files come out on every machine. Train crops come from the
left part of each photo, test and val crops from the right part (val in rows no test crop of the
same photo touches), so the three splits share no pixels. Training validates (and picks "best")
on val; the test split is only for ``ggt-ir eval``.

    python -m ggt_ir.data.demo --out datasets/demo        (or: ggt-ir demo-data)

It also writes the same pairs as webdataset shards, ``<out>/shards/ggt-demo-{train,val,test}-NNNNNN.tar``
(8 pairs each, with a manifest), which the demo trains from (``GGTShards``, docs/data.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = ("general", "rain", "haze", "snow", "low-light", "old-photo")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry")


def load_photos(max_side: int = 512) -> dict[str, np.ndarray]:
    import skimage.data

    photos = {}
    for name in PHOTOS:
        img = getattr(skimage.data, name)()[..., :3]
        s = max_side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        photos[name] = img.astype(np.float32) / 255.0
    left, right = skimage.data.stereo_motorcycle()[:2]
    photos["motorcycle"] = cv2.resize(left, (512, 345), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return photos


# ----------------------------------------------------------------------------- degradations
def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(_u8(img), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def degrade_general(x, rng):
    """Blur, down-up resize, sensor noise, JPEG: the noise stays visible (sigma 0.05-0.08, JPEG quality 70-95).
    The random draws are those of recipe version 1 (mapped to these ranges), so no other sample changes."""
    h, w = x.shape[:2]
    y = cv2.GaussianBlur(x, (0, 0), 0.6 + (rng.uniform(0.8, 1.6) - 0.8) * 0.75)
    f = 0.6 + (rng.uniform(0.5, 0.8) - 0.5)
    y = cv2.resize(cv2.resize(y, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA), (w, h),
                   interpolation=cv2.INTER_LINEAR)
    y = y + rng.normal(0, 0.05 + (rng.uniform(0.02, 0.05) - 0.02), y.shape).astype(np.float32)
    return _jpeg(y, 70 + (int(rng.integers(30, 60)) - 30) * 25 // 29)


def degrade_rain(x, rng):
    h, w = x.shape[:2]
    drops = (rng.random((h, w)) < rng.uniform(0.01, 0.03)).astype(np.float32)
    length, angle = int(rng.integers(9, 17)), rng.uniform(-20, 20)
    kernel = np.zeros((length, length), np.float32)
    kernel[:, length // 2] = 1.0 / length
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    streaks = cv2.filter2D(drops, -1, kernel / max(kernel.sum(), 1e-6)) * length * rng.uniform(0.35, 0.6)
    y = cv2.GaussianBlur(x, (0, 0), 0.6) * 0.9 + 0.05
    return y + streaks[..., None]


def degrade_haze(x, rng):
    h, w = x.shape[:2]
    depth = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.3), h, dtype=np.float32)[:, None]
    depth = depth + cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 12) * 0.3
    t = np.exp(-rng.uniform(0.6, 1.2) * depth)[..., None]
    airlight = rng.uniform(0.75, 0.95) * np.array([1.0, 1.0, rng.uniform(0.95, 1.05)], np.float32)
    return x * t + airlight * (1 - t)


def degrade_snow(x, rng):
    h, w = x.shape[:2]
    layer = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(80, 160))):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.circle(layer, (cx, cy), int(rng.integers(1, 4)), float(rng.uniform(0.6, 1.0)), -1)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.8)
    y = x * 0.85 + 0.12  # washed-out contrast of snowy scenes
    return y * (1 - layer[..., None]) + layer[..., None]


def degrade_low_light(x, rng):
    y = np.power(np.clip(x, 0, 1), rng.uniform(1.8, 2.6)) * rng.uniform(0.15, 0.35)
    peak = rng.uniform(60, 150)  # photons at full scale: shot noise
    y = rng.poisson(np.clip(y, 0, 1) * peak).astype(np.float32) / peak
    return y + rng.normal(0, 0.01, y.shape).astype(np.float32)


def degrade_old_photo(x, rng):
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    sepia = np.stack([gray * 1.07, gray * 0.94, gray * 0.75], -1)
    y = 0.35 + 0.55 * (0.7 * sepia + 0.3 * x)  # faded, yellowed
    y = cv2.GaussianBlur(y, (0, 0), rng.uniform(0.7, 1.3))
    h, w = x.shape[:2]
    for _ in range(int(rng.integers(2, 6))):  # scratches
        x0 = int(rng.integers(0, w))
        cv2.line(y, (x0, 0), (x0 + int(rng.integers(-15, 15)), h - 1), (0.95, 0.93, 0.88), 1)
    return y + rng.normal(0, 0.04, (h, w, 1)).astype(np.float32)  # film grain


DEGRADATIONS = {"general": degrade_general, "rain": degrade_rain, "haze": degrade_haze, "snow": degrade_snow,
                "low-light": degrade_low_light, "old-photo": degrade_old_photo}


# ----------------------------------------------------------------------------- builder
def build_demo(out: str | Path, size: int = 128, train_per_category: int = 8, test_per_category: int = 2,
               seed: int = 2026, val_per_category: int = 2) -> Path:
    root = Path(out) / "GGT-demo"
    marker = root / "demo.json"
    recipe = {"size": size, "train_per_category": train_per_category, "test_per_category": test_per_category,
              "val_per_category": val_per_category, "seed": seed, "version": 4}
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return root  # already built with the same recipe
    photos = load_photos()
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    test_rows: dict[str, list[int]] = {}  # photo -> top rows of its test crops (the val crops avoid them)
    crops: list[dict] = []  # where every crop came from (crops.json): the splits can be checked to share no pixels

    def write(split: str, cat: str, k: int, pname: str, x0: int, y0: int) -> None:
        gt = photos[pname][y0 : y0 + size, x0 : x0 + size]
        crops.append({"split": split, "category": cat, "photo": pname, "x": x0, "y": y0, "size": size})
        lq = np.clip(DEGRADATIONS[cat](gt, rng), 0, 1)
        stem = f"{cat}_{k:03d}_{pname}"
        for role, arr in (("LQ", lq), ("GT", gt)):
            path = root / split / cat / role / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(_u8(arr), cv2.COLOR_RGB2BGR))

    for split, per_cat in (("train", train_per_category), ("test", test_per_category)):
        for ci, cat in enumerate(CATEGORIES):
            for k in range(per_cat):
                pname = names[(ci * per_cat + k) % len(names)]
                h, w = photos[pname].shape[:2]
                # train from the left 60 % of the photo, test from the right 40 %
                x_lo, x_hi = (0, int(w * 0.6) - size) if split == "train" else (int(w * 0.6), w - size)
                x0 = int(rng.integers(x_lo, max(x_lo + 1, x_hi)))
                y0 = int(rng.integers(0, h - size + 1))
                if split == "test":
                    test_rows.setdefault(pname, []).append(y0)
                write(split, cat, k, pname, x0, y0)
    # val (held out from both, for validation and picking "best" during training): also from the right 40 %,
    # in rows no test crop of that photo touches, so val and test share no pixels. Drawn after train and
    # test, so those two are the same as in version 1 of the recipe.
    for ci, cat in enumerate(CATEGORIES):
        for k in range(val_per_category):
            for shift in range(len(names)):
                pname = names[(ci * val_per_category + k + 3 + shift) % len(names)]
                h, w = photos[pname].shape[:2]
                free = [y for y in range(0, h - size + 1)
                        if all(abs(y - t) >= size for t in test_rows.get(pname, []))]
                if free:
                    break
            else:
                raise RuntimeError("demo set: no room for a val crop that avoids the test crops")
            x_lo, x_hi = int(w * 0.6), w - size
            x0 = int(rng.integers(x_lo, max(x_lo + 1, x_hi)))
            y0 = free[int(rng.integers(0, len(free)))]
            write("val", cat, k, pname, x0, y0)
    (root / "crops.json").write_text(json.dumps(crops, indent=0))
    marker.write_text(json.dumps(recipe))
    return root


def build_demo_shards(root: str | Path, out: str | Path, name: str = "ggt-demo", per_shard: int = 8) -> dict:
    """Webdataset shards of the demo set (what options/demo/nafnet_demo.yml trains from): ``<out>/<name>-
    {train,test}-NNNNNN.tar`` + manifest, ``per_shard`` pairs each. Reruns skip finished shards."""
    from ggt_ir.data.pairing import find_pairs
    from ggt_ir.data.shards import BuildConfig, build_shards

    cfg = BuildConfig(out=str(out), name=name, max_samples_per_shard=per_shard, jobs=1, progress=False,
                      source={"mode": "tree", "root": str(root)})
    return build_shards(find_pairs(root), cfg, Path(root), log=lambda *a: None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ggt-ir demo-data", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="datasets/demo", help="output folder (default: datasets/demo)")
    p.add_argument("--size", type=int, default=128, help="crop size in pixels")
    p.add_argument("--train-per-category", type=int, default=8)
    p.add_argument("--test-per-category", type=int, default=2)
    p.add_argument("--val-per-category", type=int, default=2)
    a = p.parse_args(argv)
    root = build_demo(a.out, a.size, a.train_per_category, a.test_per_category, val_per_category=a.val_per_category)
    n = {s: len(list((root / s).rglob("LQ/*.png"))) for s in ("train", "val", "test")}
    print(f"demo dataset: {root} ({n['train']} train, {n['val']} val, {n['test']} test pairs, 6 categories)")
    m = build_demo_shards(root, Path(a.out) / "shards")
    print(f"demo shards:  {Path(a.out) / 'shards'} (" + ", ".join(f"{k}: {v}" for k, v in m["urls"].items()) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
