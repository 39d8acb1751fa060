"""QC stage 2: a VLM compares a candidate with its LQ and returns a verdict.

The VLM sees [LQ, candidate] and ``judge_prompt`` (with ``{prompt}`` and ``{category}`` filled in) and must reply
with a JSON object::

    {"verdict": "accept" | "reject" | "regenerate",
     "hallucinated_objects": false, "changed_text_or_faces": false, "remaining_degradation": true,
     "reasons": ["rain streaks remain in the sky"],
     "corrected_prompt": "Remove the remaining rain streaks in the sky; keep ..."}

``regenerate`` asks the pipeline for a new candidate from ``corrected_prompt`` (up to ``max_regenerations``
per image); the new candidate goes through QC 1 and is judged in turn. A reply without a readable verdict is
recorded as ``unparsable`` and counts as ``on_unparsable``. Every verdict, reason and raw reply is recorded.
"""
from __future__ import annotations

import json
import re
import time

VERDICTS = ("accept", "reject", "regenerate")
FLAGS = ("hallucinated_objects", "changed_text_or_faces", "remaining_degradation")


def _first_json_object(text: str):
    """The first balanced {...} in ``text`` that parses as JSON (replies often wrap it in prose or fences)."""
    start = text.find("{")
    while start >= 0:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                esc = (c == "\\") and not esc
                if c == '"' and not esc:
                    in_str = False
                continue
            if c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start:i + 1])
                        if isinstance(obj, dict):
                            return obj
                    except json.JSONDecodeError:
                        pass
                    break
        start = text.find("{", start + 1)
    return None


def parse_verdict(text: str) -> dict:
    """{verdict, reasons, corrected_prompt, flags, parsed}; ``verdict`` is 'unparsable' when nothing fits."""
    obj = _first_json_object(text or "")
    if obj is None:
        m = re.search(r"\b(accept|reject|regenerate)\b", (text or "").lower())
        if m and len(set(re.findall(r"\b(accept|reject|regenerate)\b", text.lower()))) == 1:
            return {"verdict": m[1], "reasons": [text.strip()[:300]], "corrected_prompt": "", "flags": {},
                    "parsed": "keyword"}
        return {"verdict": "unparsable", "reasons": [], "corrected_prompt": "", "flags": {}, "parsed": False}
    verdict = str(obj.get("verdict", "")).strip().lower()
    if verdict not in VERDICTS:
        return {"verdict": "unparsable", "reasons": [f"verdict {obj.get('verdict')!r} is not one of "
                                                     f"{', '.join(VERDICTS)}"],
                "corrected_prompt": "", "flags": {}, "parsed": False}
    reasons = obj.get("reasons", [])
    if isinstance(reasons, str):
        reasons = [reasons]
    flags = {k: bool(obj[k]) for k in FLAGS if k in obj}
    corrected = str(obj.get("corrected_prompt") or "").strip()
    return {"verdict": verdict, "reasons": [str(r) for r in reasons][:10], "corrected_prompt": corrected,
            "flags": flags, "parsed": True}


def judge(vlm, lq, cand, *, prompt: str, category: str, template: str, seed: int = 0) -> dict:
    """Ask ``vlm`` for a verdict on one candidate; returns the parsed verdict plus raw reply, cost and time."""
    text = template.replace("{prompt}", prompt).replace("{category}", category)
    t0 = time.monotonic()
    try:
        reply = vlm.chat([lq, cand], text, seed=seed, want_json=True)
    except Exception as e:  # noqa: BLE001 - recorded as an error verdict
        return {"verdict": "error", "reasons": [f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"],
                "corrected_prompt": "", "flags": {}, "parsed": False, "vlm": vlm.name, "cost_usd": 0.0,
                "elapsed_s": round(time.monotonic() - t0, 3)}
    v = parse_verdict(reply.text)
    v.update(vlm=vlm.name, raw=reply.text[:2000], cost_usd=reply.cost_usd, elapsed_s=round(time.monotonic() - t0, 3))
    return v
