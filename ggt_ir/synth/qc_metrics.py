"""QC stage 1: metric-based filtering of candidates (every score and every check is recorded).

For a candidate C of an LQ image L:

1. **size**: ``size.aspect_diff = |ln(aspect(C) / expected)|`` (expected: what the backend was asked for, else
   L's); then C is resized to L's size.
2. **alignment**: a similarity transform (scale, rotation, shift) from L to C, from ORB features matched with
   a ratio test and RANSAC (``cv2.estimateAffinePartial2D``) at ``align_size``, with phase correlation as the
   fallback for translation. ``align.shift`` (the largest displacement of an image corner, as a fraction of
   the longest side: shift, scale and rotation in one number), ``align.scale_dev`` (|s - 1|),
   ``align.rotation_deg``. A misaligned candidate is warped onto L when ``realign`` is on (then
   ``align.border``, the fraction of pixels the warp had to invent, is checked instead: a cropped / zoomed
   output cannot be re-aligned without inventing its borders) and rejected otherwise.
3. **fidelity** to L at low resolution: both downsampled to ``fidelity_size`` (INTER_AREA) so removed noise,
   rain or grain count little; ``fidelity.<m>`` for the FR metrics (built-in SSIM; pyiqa LPIPS, DISTS ...).
4. **colour**: Lab means and spread at the same low resolution: ``color.delta_e`` (CIE76 distance of the mean
   colours), ``color.l_shift`` (mean lightness change), ``color.std_ratio`` (lightness contrast ratio).
5. **no-reference quality**: ``nr.<m>`` of C, ``nr_lq.<m>`` of L, ``gain.<m>`` = improvement (sign-corrected
   for lower-is-better metrics such as NIQE), through :class:`ggt_ir.eval.metrics.MetricSuite`.

Thresholds are bounds on score keys (``">= 0.5"``), with per-category overrides (haze, low-light and old photos
are *expected* to change colour). A bound whose score is missing (a metric without weights) is recorded as
skipped. The best candidate maximises ``select``, a weighted sum of score keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ggt_ir.synth.options import Bound, MetricQCOptions, thresholds_for

ALIGN_KEYS = ("align.shift", "align.scale_dev", "align.rotation_deg")


@dataclass
class QC1Result:
    scores: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # key -> {value, bound, pass (True/False/None = skipped), note}
    passed: bool = True
    reasons: list = field(default_factory=list)
    image: Any = None  # the candidate as it goes on (resized, re-aligned)
    processed: list = field(default_factory=list)  # what was done to it: resized WxH -> wxh, realigned
    select_score: float | None = None
    errors: dict = field(default_factory=dict)  # metric -> why it could not score this candidate


# --------------------------------------------------------------------------- geometry
def _gray_u8(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    import cv2

    h, w = img.shape[:2]
    s = min(1.0, size / max(h, w))
    small = cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else img
    g = cv2.cvtColor(np.clip(small, 0, 1).astype(np.float32), cv2.COLOR_RGB2GRAY)
    return (cv2.GaussianBlur(g, (0, 0), 1.0) * 255).astype(np.uint8), s


def estimate_similarity(lq: np.ndarray, cand: np.ndarray, size: int = 256) -> dict:
    """Similarity transform M (2x3, full-resolution pixels) with cand(M x) ~ lq(x), and how it was found.
    Both images must have the same size. ``reliable`` is False when neither features nor phase correlation
    give a trustworthy answer (e.g. the candidate is unrelated to the LQ)."""
    import cv2

    ga, s = _gray_u8(lq, size)
    gb, _ = _gray_u8(cand, size)
    out = {"method": None, "reliable": False, "inliers": 0, "matches": 0, "response": None}
    orb = cv2.ORB_create(1000, fastThreshold=5, edgeThreshold=15, patchSize=15)
    ka, da = orb.detectAndCompute(ga, None)
    kb, db = orb.detectAndCompute(gb, None)
    M = None
    if da is not None and db is not None and len(ka) >= 8 and len(kb) >= 8:
        pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
        out["matches"] = len(good)
        if len(good) >= 8:
            pa = np.float32([ka[g.queryIdx].pt for g in good])
            pb = np.float32([kb[g.trainIdx].pt for g in good])
            est, inl = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=3.0)
            if est is not None:
                n_in = int(inl.sum())
                scale = float(math.hypot(est[0, 0], est[1, 0]))
                out["inliers"] = n_in
                if n_in >= 12 and n_in >= 0.5 * len(good) and 0.5 < scale < 2.0:
                    M, out["method"], out["reliable"] = est.astype(np.float64), "orb+ransac", True
    if M is None:
        win = cv2.createHanningWindow(ga.shape[::-1], cv2.CV_32F)
        (dx, dy), resp = cv2.phaseCorrelate(ga.astype(np.float32), gb.astype(np.float32), win)
        out["response"] = round(float(resp), 4)
        M = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        if resp >= 0.3:
            out["method"], out["reliable"] = "phase_correlation", True
    M = M.copy()
    M[:, 2] /= s  # translation to full-resolution pixels (scale and rotation are resolution-free)
    out["M"] = M
    h, w = lq.shape[:2]
    out["scale"] = float(math.hypot(M[0, 0], M[1, 0]))
    out["rotation_deg"] = float(math.degrees(math.atan2(M[1, 0], M[0, 0])))
    # the largest displacement of a corner: one number for shift, scale and rotation together
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64)
    d = corners @ M.T - corners[:, :2]
    out["shift"] = float(np.hypot(d[:, 0], d[:, 1]).max() / max(h, w))
    return out


def realign(cand: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, float]:
    """Warp the candidate onto the LQ's frame (out(x) = cand(M x)); returns (image, fraction of invented pixels)."""
    import cv2

    h, w = cand.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(cand, M.astype(np.float32), (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(np.ones((h, w), np.float32), M.astype(np.float32), (w, h), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, float((mask < 0.5).mean())


# --------------------------------------------------------------------------- colour
def lab_stats(img: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    lab = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)
    return lab.reshape(-1, 3).mean(0), float(lab[..., 0].std())


def low_res(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = size / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)


def score_each(suite, pred, ref, key: str) -> tuple[dict, dict]:
    """({metric: score}, {metric: error}) one metric at a time, so one metric failing on an image (NIQE on a
    32 px image, say) costs that score only; the error is recorded."""
    scores, errors = {}, {}
    for k, m in suite.metrics.items():
        try:
            scores[k] = float(m(pred, ref, [key])[0])
        except Exception as e:  # noqa: BLE001 - recorded per candidate
            errors[k] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return scores, errors


def _t(img: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.clip(img, 0, 1).transpose(2, 0, 1)))[None].float()


# --------------------------------------------------------------------------- the stage
class MetricQC:
    def __init__(self, opts: MetricQCOptions, device: str = "cpu", log=print, src: str = "options"):
        from ggt_ir.eval.metrics import MetricSuite

        self.opts, self.log, self.src = opts, log, src
        dev = device if opts.device == "auto" else opts.device
        self.nr = MetricSuite(opts.nr_metrics, device=dev, weights_dir=opts.weights_dir, strict=opts.strict_weights,
                              log=log) if opts.nr_metrics else None
        self.fr = MetricSuite(opts.fidelity_metrics, device=dev, weights_dir=opts.weights_dir,
                              strict=opts.strict_weights, log=log) if opts.fidelity_metrics else None
        for suite, kind in ((self.nr, "NR"), (self.fr, "FR")):
            if suite is None:
                continue
            wrong = [k for k, m in suite.metrics.items() if m.spec.mode != kind]
            if wrong:
                raise ValueError(f"qc.metrics.{'nr' if kind == 'NR' else 'fidelity'}_metrics: {', '.join(wrong)} "
                                 f"{'are' if len(wrong) > 1 else 'is'} not {kind} metrics")
        self._thresholds: dict[str, dict[str, Bound]] = {}
        self._lq_cache: dict = {}

    def variants(self) -> dict:
        out = {}
        for suite in (self.nr, self.fr):
            if suite is not None:
                out.update(suite.variants())
        return out

    def skipped(self) -> dict:
        out = {}
        for suite in (self.nr, self.fr):
            if suite is not None:
                out.update(suite.skipped)
        return out

    def thresholds(self, category: str) -> dict[str, Bound]:
        if category not in self._thresholds:
            self._thresholds[category] = thresholds_for(self.opts, category, self.src)
        return self._thresholds[category]

    def score_lq(self, lq: np.ndarray, key: str) -> dict:
        """NR scores of the LQ, remembered per image (compare arms score the same LQ once)."""
        if self.nr is None:
            return {}
        ck = (key, lq.shape, float(lq.mean()))
        if ck not in self._lq_cache:
            if len(self._lq_cache) > 4096:
                self._lq_cache.clear()
            scores, errors = score_each(self.nr, _t(lq), None, key)
            for k, e in errors.items():
                self.log(f"[synth] metric {k!r} failed on the LQ {key}: {e}")
            self._lq_cache[ck] = scores
        return dict(self._lq_cache[ck])

    def select_score(self, scores: dict) -> float | None:
        terms = [w * scores[k] for k, w in self.opts.select.items()
                 if isinstance(scores.get(k), (int, float)) and math.isfinite(scores[k])]
        return float(sum(terms)) if terms else None

    def evaluate(self, lq: np.ndarray, cand: np.ndarray, *, key: str, category: str, lq_nr: dict,
                 expected_aspect: float | None = None) -> QC1Result:
        import cv2

        o = self.opts
        r = QC1Result()
        bounds = self.thresholds(category)
        h, w = lq.shape[:2]
        ch, cw = cand.shape[:2]
        expected = expected_aspect or (w / h)
        r.scores["size.aspect_diff"] = abs(math.log((cw / ch) / expected))
        img = cand.astype(np.float32)
        if (ch, cw) != (h, w):
            interp = cv2.INTER_AREA if ch * cw > h * w else cv2.INTER_CUBIC
            img = np.clip(cv2.resize(img, (w, h), interpolation=interp), 0, 1)
            r.processed.append(f"resized {cw}x{ch} -> {w}x{h}")

        # alignment
        a = estimate_similarity(lq, img, o.align_size)
        r.scores.update({"align.shift": a["shift"], "align.scale_dev": abs(a["scale"] - 1),
                         "align.rotation_deg": abs(a["rotation_deg"]), "align.border": 0.0})
        r.scores["align.method"] = a["method"]
        notes: dict[str, str] = {}
        if not a["reliable"]:
            for k in ALIGN_KEYS:
                r.scores[k] = None
                notes[k] = "alignment could not be estimated (no reliable features or correlation peak)"
        else:
            misaligned = [k for k in ALIGN_KEYS if k in bounds and not bounds[k].holds(r.scores[k])]
            if misaligned and o.realign:
                img, border = realign(img, a["M"])
                r.scores["align.border"] = border
                r.processed.append(f"realigned (shift {a['shift']:.4f}, scale {a['scale']:.4f}, "
                                   f"rotation {a['rotation_deg']:.2f} deg; {border:.1%} of pixels filled in)")
                for k in ALIGN_KEYS:
                    notes[k] = "re-aligned; align.border is checked instead"

        # fidelity and colour at low resolution
        lq_s, c_s = low_res(lq, o.fidelity_size), low_res(img, o.fidelity_size)
        errors: dict[str, str] = {}
        if self.fr is not None:
            fr, err = score_each(self.fr, _t(c_s), _t(lq_s), key)
            r.scores.update({f"fidelity.{k}": v for k, v in fr.items()})
            errors.update({f"fidelity.{k}": e for k, e in err.items()})
        m_c, s_c = lab_stats(c_s)
        m_l, s_l = lab_stats(lq_s)
        r.scores["color.delta_e"] = float(np.linalg.norm(m_c - m_l))
        r.scores["color.l_shift"] = float(m_c[0] - m_l[0])
        r.scores["color.std_ratio"] = float(s_c / max(s_l, 1e-6))

        # no-reference quality and gain over the LQ (the slowest part: skipped when a cheaper check failed)
        early_fail = o.early_exit and any(
            k in r.scores and k not in notes and isinstance(r.scores[k], (int, float)) and not b.holds(r.scores[k])
            for k, b in bounds.items())
        if self.nr is not None and early_fail:
            for k in self.nr.metrics:
                notes[f"nr.{k}"] = notes[f"gain.{k}"] = "not computed: an earlier check failed (early_exit)"
        elif self.nr is not None:
            nr, err = score_each(self.nr, _t(img), None, key)
            errors.update({f"nr.{k}": e for k, e in err.items()})
            for k, v in nr.items():
                r.scores[f"nr.{k}"] = v
                if k in lq_nr:
                    r.scores[f"nr_lq.{k}"] = lq_nr[k]
                    sign = -1.0 if self.nr.metrics[k].spec.lower_better else 1.0
                    r.scores[f"gain.{k}"] = sign * (v - lq_nr[k])

        for k, b in bounds.items():
            v = r.scores.get(k)
            if k in ALIGN_KEYS and k in notes:
                r.checks[k] = {"value": v, "bound": b.text, "pass": None, "note": notes[k]}
                continue
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                why = notes.get(k) or errors.get(k) or errors.get("nr." + k.partition(".")[2]) or "score missing"
                r.checks[k] = {"value": v, "bound": b.text, "pass": None, "note": why}
                continue
            ok = b.holds(v)
            r.checks[k] = {"value": v, "bound": b.text, "pass": ok}
            if not ok:
                r.reasons.append(f"{k} = {v:.4g} fails {b.text}")
        r.errors = errors
        r.passed = not r.reasons
        r.image = img
        r.select_score = self.select_score(r.scores)
        return r
