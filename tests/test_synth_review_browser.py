"""The review page in a real headless Chromium (Debian's chromium; skipped without one; .ci/run installs it):
keyboard decisions, the write-back server, and a screenshot.

As a script it screenshots the review page of a run:
    python tests/test_synth_review_browser.py experiments/synth/demo experiments/synth/demo/review/screenshot.png
"""
from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshot_reports import CHROMIUM_NAMES, HEADLESS_FLAGS, find_chromium  # noqa: E402


def chrome(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="ggt_ir_chromium_") as profile:
        return subprocess.run([find_chromium(), *HEADLESS_FLAGS, f"--user-data-dir={profile}",
                               "--virtual-time-budget=8000", *args], capture_output=True, text=True, timeout=timeout)


def screenshot(run: Path, out: Path, size: str = "1400,1000") -> Path:
    from ggt_ir.synth.review import write_review

    page = write_review(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = chrome([f"--screenshot={out}", f"--window-size={size}", page.resolve().as_uri()])
    if not out.is_file():
        raise RuntimeError(f"no screenshot written: {r.stderr[-500:]}")
    return out


def decisions_in(dom: str) -> dict:
    m = re.search(r'<pre id="decisions-json">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    return json.loads(html.unescape(m.group(1)))


needs_browser = pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (apt-get install chromium, "
                                                                   "or set $CHROMIUM)")


@pytest.fixture
def review_run(tmp_path, demo_root):
    from test_synth import load, run, write_opts

    p = write_opts(tmp_path / "o.yml", name="web", input={"path": str(demo_root / "test")},
                   generators=[{"type": "FakeEdit", "name": "good", "ops": ["denoise"]},
                               {"type": "FakeEdit", "name": "alt", "ops": ["identity"]}])
    run(load(p))
    return tmp_path / "runs" / "web"


@needs_browser
def test_keyboard_decisions_in_a_real_browser(review_run):
    from ggt_ir.synth.review import page_data, write_review
    from test_synth import records

    page = write_review(review_run)
    items = page_data(review_run, records(review_run))["items"]
    # a: accept item 0 (its chosen candidate) -> item 1; r: reject it -> item 2; 2: pick the 2nd candidate,
    # a: accept -> item 3; ArrowLeft back to item 2, u: undo it
    dom = chrome(["--dump-dom", page.resolve().as_uri() + "#replay=a,r,2,a,ArrowLeft,u"]).stdout
    d = decisions_in(dom)
    assert d["format"] == "ggt-ir-synth-decisions" and d["run"] == "web"
    dec = d["decisions"]
    assert dec[items[0]["key"]]["decision"] == "accept" and dec[items[0]["key"]]["candidate"] == items[0]["chosen"]
    assert dec[items[1]["key"]]["decision"] == "reject"
    assert items[2]["key"] not in dec and len(dec) == 2
    assert "1 / 6" not in dom and "3 / 6" in dom  # the page shows the third image


@needs_browser
def test_served_page_writes_decisions_back(review_run):
    from ggt_ir.synth.review import page_data, serve_in_thread, write_review
    from test_synth import records

    write_review(review_run)
    items = page_data(review_run, records(review_run))["items"]
    srv, _ = serve_in_thread(review_run)
    saved_file = review_run / "review" / "decisions.json"
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/review/index.html#replay=r,a"
        for _ in range(3):  # the page saves with fetch(); on a loaded machine the dump can come before it
            chrome(["--dump-dom", url])
            if saved_file.is_file():
                break
    finally:
        srv.shutdown()
        srv.server_close()
    saved = json.loads((review_run / "review" / "decisions.json").read_text())["decisions"]
    assert saved[items[0]["key"]]["decision"] == "reject" and saved[items[1]["key"]]["decision"] == "accept"
    from ggt_ir.synth.finalize import finalize

    stats = finalize(review_run, log=lambda *a: None)  # reads review/decisions.json by default
    assert stats["all"]["manual_reject"] == 1 and stats["all"]["final"] == 5


@needs_browser
def test_screenshot_of_the_review_page(review_run, tmp_path):
    import cv2

    out = screenshot(review_run, tmp_path / "review.png")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[:2] == (1000, 1400)
    assert img.reshape(-1, 3).std(0).max() > 10  # not a blank page


if __name__ == "__main__":
    if find_chromium() is None:
        sys.exit("no Chromium found (" + ", ".join(CHROMIUM_NAMES) + "): apt-get install chromium, or set $CHROMIUM")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
