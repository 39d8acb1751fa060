"""The ``ggt-ir synth`` option schema (typed, through the project's preamble ``ggt_ir.config.load_typed``).

One file describes a run: its input, output, prompting, generators, candidates and the two automatic QC stages.
``compare:`` adds the MFM study (docs/synthesis.md). Paths are relative to the working directory (as in every
option file of the project); ``include:`` paths are relative to the including file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ggt_ir.config import OptionsError, load_typed

CATEGORIES = ("general", "rain", "haze", "snow", "low-light", "old-photo")


@dataclass
class InputOptions:
    type: str = "folder"  # folder | list | shards
    path: str = ""  # a folder of LQ images (a GGT tree: its LQ side), a list file, or a shard pattern
    categories: Optional[List[str]] = None  # keep only these categories
    default_category: str = "general"  # for images whose path / list row names none
    limit: int = 0  # first N images (after sorting by key); 0 = all
    per_category: int = 0  # first N images of each category (a balanced probe set); 0 = all


@dataclass
class OutputOptions:
    root: str = "experiments/synth"  # the run folder is <root>/<name>
    split: str = "train"  # dataset/<split>/<category>/{LQ,GT,prompt}/
    copy_lq: bool = True  # copy the LQ's original bytes next to the HQ (False: symlink)


@dataclass
class PromptingOptions:
    mode: str = "fixed"  # fixed | adaptive (a VLM writes it from the LQ) | input (the input's own prompt, else fixed)
    fixed: Dict[str, str] = field(default_factory=dict)  # category -> instruction; 'default' for other categories
    vlm: Optional[Dict[str, Any]] = None  # {type: QwenVL | GeminiVLM | FakeVLM, ...}
    meta_prompt: str = ""  # what the VLM is asked; {category} and {fixed_prompt} are filled in
    max_chars: int = 800  # longer adaptive prompts are cut
    cache_dir: Optional[str] = None  # default <run>/prompts; shared across runs, keyed by VLM + meta-prompt + image


@dataclass
class CandidateOptions:
    per_generator: int = 1  # seeds per generator (a generator's own 'candidates' wins)
    seed: int = 0  # candidate i of a generator uses seed + i


@dataclass
class MetricQCOptions:
    """QC stage 1. Score keys (recorded for every candidate; thresholds and ``select`` name them):
    ``nr.<m>`` / ``nr_lq.<m>`` / ``gain.<m>`` (NR metric of candidate / LQ / improvement, direction-aware),
    ``fidelity.<m>`` (FR metric, candidate vs LQ, both downsampled to ``fidelity_size``), ``color.delta_e``,
    ``color.l_shift``, ``color.std_ratio`` (Lab), ``align.shift``, ``align.scale_dev``, ``align.rotation_deg``,
    ``align.border`` (fraction of pixels filled in by re-alignment), ``size.aspect_diff``."""

    enabled: bool = True
    nr_metrics: List[str] = field(default_factory=list)  # pyiqa NR names: musiq, clipiqa, topiq_nr, niqe, ...
    fidelity_metrics: List[str] = field(default_factory=lambda: ["ssim"])  # ssim (built-in), lpips, dists
    fidelity_size: int = 64  # longest side of the low-resolution comparison
    weights_dir: Optional[str] = None  # pyiqa weights (default $GGT_IR_WEIGHTS, then $TORCH_HOME/hub)
    strict_weights: bool = False  # false: a metric without weights is skipped and reported
    device: str = "auto"  # auto (this process's accelerator) | cpu | cuda
    realign: bool = True  # a misaligned candidate is warped onto the LQ instead of rejected
    early_exit: bool = True  # skip the NR metrics of a candidate that already failed a geometry/fidelity/colour check
    align_size: int = 256  # longest side the alignment is estimated at
    thresholds: Dict[str, Optional[str]] = field(default_factory=dict)  # score key -> ">= 0.5" | "<= 25" | null
    category_thresholds: Dict[str, Dict[str, Optional[str]]] = field(default_factory=dict)  # per-category overrides
    select: Dict[str, float] = field(default_factory=lambda: {"fidelity.ssim": 1.0})  # weighted sum, highest wins


@dataclass
class VLMQCOptions:
    """QC stage 2: a VLM compares each surviving candidate with the LQ."""

    enabled: bool = False
    vlm: Optional[Dict[str, Any]] = None  # default: prompting.vlm
    judge_prompt: str = ""  # {prompt} and {category} are filled in; the reply must hold the JSON verdict
    max_regenerations: int = 2  # K: 'regenerate' verdicts answered with a new candidate (corrected prompt)
    mode: str = "best_first"  # best_first: judge by select score until one is accepted | all: judge every survivor
    on_unparsable: str = "reject"  # a reply without a valid verdict: reject | accept


@dataclass
class QCOptions:
    metrics: MetricQCOptions = field(default_factory=MetricQCOptions)
    vlm: VLMQCOptions = field(default_factory=VLMQCOptions)


@dataclass
class RuntimeOptions:
    workers: int = 1  # images in flight per process (threads; > 1 pays off for API generators)
    log_every: int = 1  # progress line every N images
    fail_fast: bool = False  # stop at the first generator error instead of recording it
    api_log: bool = True  # <run>/logs/api-rank<r>.jsonl: every request/response, images and keys redacted


@dataclass
class CompareOptions:
    modes: List[str] = field(default_factory=lambda: ["fixed", "adaptive"])  # prompting modes per generator
    out: Optional[str] = None  # default <output.root>/<name>


@dataclass
class SynthOptions:
    name: str = "synth"
    input: InputOptions = field(default_factory=InputOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    prompting: PromptingOptions = field(default_factory=PromptingOptions)
    generators: List[Dict[str, Any]] = field(default_factory=list)  # [{type: <GENERATORS name>, name, ...}]
    candidates: CandidateOptions = field(default_factory=CandidateOptions)
    qc: QCOptions = field(default_factory=QCOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    compare: CompareOptions = field(default_factory=CompareOptions)
    source_file: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.output.root) / self.name


# --------------------------------------------------------------------------- thresholds
SCORE_PREFIXES = ("nr", "nr_lq", "gain", "fidelity", "color", "align", "size")
_BOUND = re.compile(r"^\s*(>=|<=|>|<)\s*([-+0-9.eE]+|inf|-inf)\s*$")


@dataclass(frozen=True)
class Bound:
    op: str
    value: float
    text: str

    def holds(self, x: float) -> bool:
        return {">=": x >= self.value, "<=": x <= self.value, ">": x > self.value, "<": x < self.value}[self.op]


def parse_bound(text: str, src: str, key: str) -> Bound:
    m = _BOUND.match(str(text))
    if not m:
        raise OptionsError(f"{src}: {key}: {text!r} is not a bound; write e.g. '>= 0.5' or '<= 25' (or null to "
                           "switch the check off)")
    return Bound(m[1], float(m[2]), f"{m[1]} {m[2]}")


def check_score_key(key: str, src: str, where: str) -> None:
    prefix = key.partition(".")[0]
    if prefix not in SCORE_PREFIXES or "." not in key:
        import difflib

        close = difflib.get_close_matches(prefix, SCORE_PREFIXES, n=1)
        hint = f" Did you mean '{close[0]}.…'?" if close else ""
        raise OptionsError(f"{src}: {where}: unknown score key {key!r}; keys are <{'|'.join(SCORE_PREFIXES)}>.<name> "
                           f"(docs/synthesis.md, 'QC stage 1').{hint}")


def thresholds_for(q: MetricQCOptions, category: str, src: str = "options") -> dict[str, Bound]:
    """The thresholds that apply to ``category``: the global ones, overridden (or switched off by null) per category."""
    merged = dict(q.thresholds)
    merged.update(q.category_thresholds.get(category, {}))
    return {k: parse_bound(v, src, f"qc.metrics.thresholds.{k}") for k, v in merged.items() if v is not None}


# --------------------------------------------------------------------------- loading
def _choice(src: str, key: str, value: str, choices) -> None:
    if value not in choices:
        raise OptionsError(f"{src}: '{key}' is {value!r}; expected one of {', '.join(choices)}")


def check_synth_options(opt: SynthOptions, src: str) -> SynthOptions:
    """Everything that can be checked before a model is loaded: choices, bounds, generator and VLM blocks."""
    from ggt_ir.synth import GENERATORS, VLMS

    _choice(src, "input.type", opt.input.type, ("folder", "list", "shards"))
    if not opt.input.path:
        raise OptionsError(f"{src}: 'input.path' is empty; give a folder of LQ images, a list file or a shard pattern")
    _choice(src, "prompting.mode", opt.prompting.mode, ("fixed", "adaptive", "input"))
    _choice(src, "qc.vlm.mode", opt.qc.vlm.mode, ("best_first", "all"))
    _choice(src, "qc.vlm.on_unparsable", opt.qc.vlm.on_unparsable, ("reject", "accept"))
    for m in opt.compare.modes:
        _choice(src, "compare.modes[]", m, ("fixed", "adaptive", "input"))
    if not opt.generators:
        raise OptionsError(f"{src}: 'generators' is empty; add at least one, e.g. "
                           "[{type: FluxKontext, pretrained: /path/to/FLUX.1-Kontext-dev}] "
                           f"(types: {', '.join(GENERATORS.names())})")
    typed, names = [], set()
    for i, block in enumerate(opt.generators):
        g = GENERATORS.check(block, src, f"generators[{i}]")
        g.name = g.name or g.type
        if g.name in names:
            raise OptionsError(f"{src}: generators[{i}].name {g.name!r} is used twice; give each generator a "
                               "distinct 'name' (it names the candidates and the manifest's 'generator')")
        names.add(g.name)
        typed.append(g)
    opt.generators = typed
    for key in ("prompting.vlm", "qc.vlm.vlm"):
        block = opt.prompting.vlm if key == "prompting.vlm" else opt.qc.vlm.vlm
        if block is not None:
            typed_vlm = VLMS.check(block, src, key)
            if key == "prompting.vlm":
                opt.prompting.vlm = typed_vlm
            else:
                opt.qc.vlm.vlm = typed_vlm
    if opt.prompting.mode == "adaptive" and opt.prompting.vlm is None:
        raise OptionsError(f"{src}: prompting.mode is adaptive but 'prompting.vlm' is not set "
                           f"(e.g. {{type: QwenVL, pretrained: /path/to/Qwen2.5-VL-7B-Instruct}}; types: "
                           f"{', '.join(VLMS.names())})")
    if opt.prompting.mode == "adaptive" and not opt.prompting.meta_prompt.strip():
        raise OptionsError(f"{src}: prompting.meta_prompt is empty; the adaptive mode needs the question the VLM "
                           "is asked (options/synth/_base.yml has one)")
    if opt.qc.vlm.enabled:
        if opt.qc.vlm.vlm is None and opt.prompting.vlm is None:
            raise OptionsError(f"{src}: qc.vlm.enabled but neither 'qc.vlm.vlm' nor 'prompting.vlm' names a VLM")
        if not opt.qc.vlm.judge_prompt.strip():
            raise OptionsError(f"{src}: qc.vlm.judge_prompt is empty (options/synth/_base.yml has one)")
        if opt.qc.vlm.max_regenerations < 0:
            raise OptionsError(f"{src}: qc.vlm.max_regenerations must be >= 0")
    q = opt.qc.metrics
    for k in list(q.thresholds) + list(q.select):
        check_score_key(k, src, "qc.metrics.thresholds" if k in q.thresholds else "qc.metrics.select")
    for cat, over in q.category_thresholds.items():
        for k in over:
            check_score_key(k, src, f"qc.metrics.category_thresholds.{cat}")
    for cat in [*CATEGORIES, *q.category_thresholds]:
        thresholds_for(q, cat, src)
    for k, w in q.select.items():
        if not math.isfinite(w):
            raise OptionsError(f"{src}: qc.metrics.select.{k}: weight must be a finite number")
    if opt.candidates.per_generator < 1:
        raise OptionsError(f"{src}: candidates.per_generator must be >= 1")
    if opt.runtime.workers < 1:
        raise OptionsError(f"{src}: runtime.workers must be >= 1")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", opt.name):
        raise OptionsError(f"{src}: name {opt.name!r}: use letters, digits, '.', '_' and '-' (it names the run folder)")
    return opt


def load_synth_options(path: str, overrides: list[str] | None = None, *, check_input: bool = True) -> SynthOptions:
    opt = load_typed(SynthOptions, path, overrides)
    src = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    check_synth_options(opt, src)
    if check_input:
        p = opt.input.path
        if opt.input.type == "folder" and not Path(p).is_dir():
            raise OptionsError(f"{src}: input.path: folder not found: {p}. Build the demo data with "
                               "`make demo-data`, or fix the path.")
        if opt.input.type == "list" and not Path(p).is_file():
            raise OptionsError(f"{src}: input.path: list file not found: {p}")
    return opt
