"""Build a tiny eval report and a tiny table page, open both in headless Chromium, click through them
(sort a table by a header, open the full-size viewer from a thumbnail, zoom, drag the slider, step to the
next image, switch layers) and save PNG screenshots.

    python tests/screenshot_reports.py --out /tmp/report_shots            # screenshots + a line per check
    python tests/screenshot_reports.py --out shots --work /tmp/reports    # keep the built reports too

The reports: the demo set (6 categories x 2 test images, 64 px), two tiny random SwinIRs (tests/helpers.py)
as the rows "SwinIR / Existing" and "SwinIR / GGT-100K", weight-free metrics (psnr, ssim on the paired
set, entropy on an LQ-only set). Chromium (Debian: ``apt-get install chromium``) is driven through the
DevTools protocol over a websocket written with the standard library. Any failed check raises.
tests/test_report.py runs these checks when a Chromium is on PATH and skips them otherwise.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CHROMIUM_NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "google-chrome-stable",
                  "chrome", "headless_shell")
# headless, as root, and quiet on a machine with no network (background requests would be refused many at a time)
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                  "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic")


def find_chromium() -> str | None:
    """``$CHROMIUM`` or the first Chromium-like browser on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


# --------------------------------------------------------------------------- the reports
def build_reports(work: Path, log=print) -> dict:
    """Two tiny evaluations (two rows) and their table; returns the paths of the pages and folders."""
    import torch
    import yaml
    from accelerate.state import PartialState

    from helpers import TINY_SWINIR

    from ggt_ir.archs import build_network
    from ggt_ir.data.demo import build_demo
    from ggt_ir.eval.loop import run_evaluation
    from ggt_ir.eval.options import load_eval_options
    from ggt_ir.eval.table import ColumnOptions, DeltaOptions, RowOptions, TableOptions, build_table, write_all
    from ggt_ir.train.checkpoint import export_generator

    work.mkdir(parents=True, exist_ok=True)
    demo = build_demo(work / "demo", size=64, train_per_category=1, test_per_category=2)
    real = work / "RealLQ"  # an LQ-only set with two subsets
    for k, lq in enumerate(sorted(demo.glob("test/*/LQ/*.png"))[::3]):
        dst = real / ("social" if k % 2 else "old_photos") / lq.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lq, dst)
    results = work / "results"
    for seed, data in ((0, "Existing"), (1, "GGT-100K")):
        run = work / "experiments" / f"swinir_{seed}"
        (run / "models").mkdir(parents=True, exist_ok=True)
        (run / "options.yml").write_text(yaml.safe_dump({"name": run.name, "network_g": TINY_SWINIR}))
        torch.manual_seed(seed)
        net = build_network(TINY_SWINIR)
        export_generator(run / "models" / "net_g_1", net.state_dict(), net.state_dict(), 1, TINY_SWINIR)
        opt = {"name": f"swinir_{data.lower()}", "results_root": str(results), "label": {"model": "SwinIR", "data": data},
               "model": {"run": str(run)},
               "datasets": {"test": {"type": "PairedFolder", "dataroot": str(demo), "split": "test"},
                            "reallq": {"type": "LQFolder", "dataroot": str(real)}},
               "metrics": {"psnr": {}, "ssim": {}, "entropy": {}},
               "eval": {"batch_size": 4, "num_grid": 1, "grid_size": 128, "pbar": False, "device": "cpu"}}
        option_file = work / f"eval_{seed}.yml"
        option_file.write_text(yaml.safe_dump(opt, sort_keys=False))
        run_evaluation(load_eval_options(option_file), log=lambda *a: None)
        PartialState._reset_state()
        log(f"built eval report {results / opt['name'] / 'index.html'}")
    topt = TableOptions(name="tiny", title="Tiny table: existing data vs GGT-100K (random weights)",
                        out_dir=str(results / "tables"),
                        rows=[RowOptions(summary=str(results / n / "summary.json")) for n in ("swinir_existing", "swinir_ggt-100k")],
                        columns=[ColumnOptions(set="test", metric="psnr"), ColumnOptions(set="test", metric="ssim"),
                                 ColumnOptions(set="test", metric="psnr", category="rain"),
                                 ColumnOptions(set="reallq", metric="entropy")],
                        set_labels={"test": "Demo test", "reallq": "RealLQ (demo)"},
                        delta=DeltaOptions(baseline="Existing", target="GGT-100K"))
    topt.compare.images_per_category = 2
    files = write_all(build_table(topt), Path(topt.out_dir), topt.name)
    log("built table page " + ", ".join(str(f) for f in files))
    return {"eval_dir": results / "swinir_ggt-100k", "eval_page": results / "swinir_ggt-100k" / "index.html",
            "other_eval_dir": results / "swinir_existing", "table_page": results / "tables" / "tiny.html",
            "table_dir": results / "tables"}


# --------------------------------------------------------------------------- a DevTools client (stdlib only)
class WebSocket:
    """The client side of RFC 6455, enough for the DevTools protocol: masked text frames out, (fragmented)
    frames in, pings answered."""

    def __init__(self, url: str, timeout: float = 60):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n")
        status = bytes(self.buf[:end]).split(b"\r\n")[0]
        del self.buf[:end + 4]
        if b" 101 " not in status:
            raise ConnectionError(f"websocket handshake with {url} failed: {status!r}")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the browser closed the connection")
        self.buf += chunk

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _send_frame(self, opcode: int, data: bytes) -> None:
        head = bytearray([0x80 | opcode])
        n = len(data)
        if n < 126:
            head.append(0x80 | n)
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.sock.sendall(bytes(head) + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        message = bytearray()
        while True:
            b1, b2 = self._read(2)
            n = b2 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b2 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            op = b1 & 0x0F
            if op == 0x9:
                self._send_frame(0xA, payload)
                continue
            if op == 0x8:
                raise ConnectionError("the browser closed the websocket")
            message += payload
            if b1 & 0x80:
                return message.decode()


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    KEYS = {"ArrowRight": 39, "ArrowLeft": 37, "Escape": 27, "t": 84, "s": 83, " ": 32}

    def __init__(self, exe: str, width: int = 1280, height: int = 900):
        self.profile = Path(tempfile.mkdtemp(prefix="ggt_ir_chromium_"))
        self.log = open(self.profile / "chromium.log", "w")
        self.proc = subprocess.Popen([exe, *HEADLESS_FLAGS, "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        port_file, deadline = self.profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError(f"{exe} did not start its DevTools server; see {self.profile / 'chromium.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        for _ in range(50):
            targets = [t for t in json.load(urlopen(f"http://127.0.0.1:{port}/json/list")) if t.get("type") == "page"]
            if targets:
                break
            time.sleep(0.1)
        self.ws = WebSocket(targets[0]["webSocketDebuggerUrl"])
        self.next_id, self.events = 0, []
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.size = (width, height)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"javascript failed: {expression[:120]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 20, what: str = "") -> None:
        deadline = time.time() + timeout
        while not self.js(expression):
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            time.sleep(0.1)

    def errors(self) -> list[str]:
        """Script exceptions, console errors and failed loads (missing files) seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:400])
            elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(str(p.get("args"))[:400])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def goto(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        time.sleep(0.2)
        self.wait("document.readyState === 'complete'", what=f"{path} to load")
        # lazy images: load them all, so a missing file shows as an error
        self.js("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager'); true")
        self.wait("Array.from(document.images).every(i => i.complete)", what="every image to load")

    def center(self, selector: str) -> tuple[float, float]:
        r = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
                    "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                    "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        assert r is not None, f"no element {selector}"
        return r[0], r[1]

    def mouse(self, kind: str, x: float, y: float, **kw) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, **kw)

    def click(self, selector: str | None = None, at: tuple[float, float] | None = None) -> None:
        x, y = at or self.center(selector)
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", buttons=1, clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", buttons=0, clickCount=1)
        time.sleep(0.1)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        self.mouse("mouseMoved", *start)
        self.mouse("mousePressed", *start, button="left", buttons=1, clickCount=1)
        for k in range(1, steps + 1):
            self.mouse("mouseMoved", start[0] + (end[0] - start[0]) * k / steps,
                       start[1] + (end[1] - start[1]) * k / steps, button="left", buttons=1)
        self.mouse("mouseReleased", *end, button="left", buttons=0, clickCount=1)

    def wheel(self, x: float, y: float, delta_y: float) -> None:
        self.mouse("mouseWheel", x, y, deltaX=0, deltaY=delta_y)
        time.sleep(0.05)

    def key(self, key: str) -> None:
        code, text = self.KEYS[key], key if len(key) == 1 else ""
        self.call("Input.dispatchKeyEvent", type="keyDown" if text else "rawKeyDown", key=key, text=text,
                  windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)
        time.sleep(0.05)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path


# --------------------------------------------------------------------------- the checks
def _viewer_ready(b: Browser) -> None:
    b.wait("!document.getElementById('ggt-viewer').hidden", what="the viewer to open")
    b.wait("['.gv-a img', '.gv-b img'].every(s => { const i = document.querySelector(s); "
           "return i.complete && i.naturalWidth > 0; }) && GGT.V.W > 0", what="the full-size images")
    time.sleep(0.2)


def check_eval_page(b: Browser, paths: dict, shots: Path, log=print) -> list[Path]:
    per_image = json.loads((paths["eval_dir"] / "per_image.json").read_text())
    summary = json.loads((paths["eval_dir"] / "summary.json").read_text())
    b.goto(paths["eval_page"])
    assert not b.errors(), f"errors on the eval page: {b.errors()}"
    broken = b.js("Array.from(document.images).filter(i => i.getAttribute('src') && i.naturalWidth === 0).map(i => i.getAttribute('src'))")
    assert not broken, f"images that do not load: {broken}"
    out = [b.screenshot(shots / "eval_page.png", full_page=True)]
    for si, (s, recs) in enumerate(per_image["sets"].items()):
        rows = b.js(f"document.querySelectorAll('#img-{si} tbody tr').length")
        assert list(summary["sets"])[si] == s
        assert rows == len(recs), f"set {s}: {rows} table rows for {len(recs)} images"
    shown = b.js("Array.from(document.querySelectorAll('.cat')).map(e => e.dataset.category)")
    wanted = [c for info in summary["sets"].values() for c in info["per_category"]]
    assert sorted(shown) == sorted(wanted), f"grids cover {shown}, categories are {wanted}"
    log(f"eval page: {sum(len(r) for r in per_image['sets'].values())} table rows, grids for {len(shown)} categories, "
        "every image loads, no script error")

    # sort the paired set's image table by psnr: best (highest) first, then the reverse
    assert list(summary["sets"])[0] == "test", "the builder lists the paired set first"
    col = "#img-0 thead th[data-key=psnr]"
    values = (f"Array.from(document.querySelectorAll('#img-0 tbody tr')).map(r => "
              f"parseFloat(r.cells[Array.from(document.querySelectorAll('#img-0 thead th')).indexOf("
              f"document.querySelector('{col}'))].dataset.v))")
    b.click(col)
    v = b.js(values)
    assert v == sorted(v, reverse=True), f"after one click on psnr: {v}"
    b.click(col)
    v = b.js(values)
    assert v == sorted(v), f"after two clicks on psnr: {v}"
    b.click("#img-0 thead th:nth-child(3)")  # the image names, A to Z
    names = b.js("Array.from(document.querySelectorAll('#img-0 tbody tr')).map(r => r.cells[2].textContent)")
    assert names == sorted(names, key=str.lower), f"sorted by name: {names}"
    b.click(col)  # best psnr first again, for the screenshot
    b.js("document.querySelector('#img-0').closest('.scroll').scrollIntoView(); window.scrollBy(0, -60); true")
    out.append(b.screenshot(shots / "eval_table_sorted.png"))
    log("eval page: a click on psnr sorts best-first, a second click reverses, the image column sorts A-Z")

    # the full-size viewer from the first thumbnail: output | GT, the same zoom and pan for both
    b.click("#img-0 tbody tr:first-child img.thumb")
    _viewer_ready(b)
    first = b.js("document.querySelector('#img-0 tbody tr:first-child td:nth-child(3)').textContent")
    state = b.js("({title: document.querySelector('.gv-title').textContent, a: GGT.V.a, b: GGT.V.b, "
                 "srcA: document.querySelector('.gv-a img').getAttribute('src'), "
                 "srcB: document.querySelector('.gv-b img').getAttribute('src'), "
                 "w: document.querySelector('.gv-a img').naturalWidth})")
    assert first in state["title"], f"viewer shows {state['title']}, the row clicked is {first}"
    assert "images/test/" in state["srcA"] and "/GT/" in state["srcB"], state
    assert state["w"] == 64, f"the viewer shows a {state['w']}-px image, the full size is 64"
    out.append(b.screenshot(shots / "eval_viewer.png"))
    w, h = b.size
    s0 = b.js("GGT.V.s")
    for _ in range(4):
        b.wheel(w * 0.4, h * 0.45, -300)
    z = b.js("({s: GGT.V.s, ta: document.querySelector('.gv-a img').style.transform, "
             "tb: document.querySelector('.gv-b img').style.transform})")
    assert z["s"] > 2 * s0 and z["ta"] == z["tb"], f"zoom: {s0} -> {z}"
    x_line = b.js("document.querySelector('.gv-line').getBoundingClientRect().left + 1")
    y_mid = b.js("(() => { const r = document.querySelector('.gv-stage').getBoundingClientRect(); return r.top + r.height / 2; })()")
    b.drag((x_line, y_mid), (w * 0.3, y_mid))
    split = b.js("GGT.V.split")
    assert abs(split - 0.3) < 0.03, f"the slider is at {split} after a drag to 0.3"
    b.drag((w * 0.7, y_mid), (w * 0.6, y_mid - 40))  # a pan: both images move together
    p = b.js("({ta: document.querySelector('.gv-a img').style.transform, tb: document.querySelector('.gv-b img').style.transform})")
    assert p["ta"] == p["tb"] and p["ta"] != z["ta"], f"pan: {z} -> {p}"
    out.append(b.screenshot(shots / "eval_viewer_zoomed.png"))
    log(f"eval viewer: opens the clicked row at full size (output | GT), wheel zoom x{z['s'] / s0:.1f} and a pan on "
        "both layers, the slider follows a drag")

    b.click(".gv-pick[data-side=a] button:nth-child(1)")  # left: the LQ
    assert b.js("GGT.V.a") == 0 and "/LQ/" in b.js("document.querySelector('.gv-a img').getAttribute('src')")
    b.key("ArrowRight")
    _viewer_ready(b)
    assert b.js("GGT.V.pos") == 1, "ArrowRight did not move to the next image"
    b.key("t")
    assert b.js("GGT.V.mode") == "toggle"
    b.key(" ")
    assert b.js("document.querySelector('.gv-b').style.visibility") == "hidden", "space did not flip the toggle"
    b.key("t")
    assert b.js("GGT.V.mode") == "slider" and b.js("document.querySelector('.gv-b').style.visibility") == ""
    b.key("Escape")
    assert b.js("document.getElementById('ggt-viewer').hidden"), "Escape did not close the viewer"
    # a grid panel opens the viewer too, on the image of that panel
    b.click(".cat .trip figure[data-role=lq] img")
    _viewer_ready(b)
    assert b.js("GGT.V.a") == 0 and b.js("GGT.V.b") == 1, "a click on an LQ panel should show LQ | output"
    out.append(b.screenshot(shots / "eval_viewer_from_grid.png"))
    b.key("Escape")
    assert not b.errors(), f"errors on the eval page: {b.errors()}"
    log("eval viewer: layer buttons, ArrowRight, toggle + space, Escape, and a grid panel work")
    return out


def check_table_page(b: Browser, paths: dict, shots: Path, log=print) -> list[Path]:
    b.goto(paths["table_page"])
    assert not b.errors(), f"errors on the table page: {b.errors()}"
    broken = b.js("Array.from(document.images).filter(i => i.getAttribute('src') && i.naturalWidth === 0).map(i => i.getAttribute('src'))")
    assert not broken, f"images that do not load: {broken}"
    assert b.js("Array.from(document.images).some(i => i.getAttribute('src').endsWith('tiny_delta.png'))"), "no Δ plot"
    out = [b.screenshot(shots / "table_page.png", full_page=True)]
    trips = b.js("Array.from(document.querySelectorAll('.trip')).map(t => t.querySelectorAll('figure').length)")
    assert trips and all(n == 4 for n in trips[:12]), f"paired comparisons should be LQ | 2 rows | GT: {trips}"
    b.click(".trip figure[data-row='SwinIR / Existing'] img")
    _viewer_ready(b)
    names = b.js("Array.from(document.querySelectorAll('.gv-pick[data-side=a] button')).map(x => x.textContent)")
    assert names == ["LQ", "SwinIR / Existing", "SwinIR / GGT-100K", "GT"], names
    assert (b.js("GGT.V.a"), b.js("GGT.V.b")) == (1, 2), "the viewer should open on the two rows"
    out.append(b.screenshot(shots / "table_viewer.png"))
    b.click(".gv-pick[data-side=b] button:nth-child(4)")  # right: the GT
    _viewer_ready(b)
    assert b.js("GGT.V.b") == 3 and "/GT/" in b.js("document.querySelector('.gv-b img').getAttribute('src')")
    b.key("Escape")
    assert not b.errors(), f"errors on the table page: {b.errors()}"
    log(f"table page: {len(trips)} images side by side, the viewer compares any two of LQ / 2 rows / GT, "
        "plot and Δ plot load")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="report_shots", help="folder for the screenshots")
    p.add_argument("--work", help="folder for the built reports (default: a temporary folder, removed)")
    p.add_argument("--chromium", default=find_chromium(), help="the browser (default: $CHROMIUM or chromium on PATH)")
    a = p.parse_args(argv)
    if not a.chromium:
        print("no Chromium found (apt-get install chromium, or set $CHROMIUM)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = None if a.work else tempfile.TemporaryDirectory(prefix="ggt_ir_reports_")
    work = Path(a.work or tmp.name)
    try:
        paths = build_reports(work)
        shots = Path(a.out)
        with Browser(a.chromium) as b:
            files = check_eval_page(b, paths, shots) + check_table_page(b, paths, shots)
        print("screenshots: " + ", ".join(str(f) for f in files))
    finally:
        if tmp:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
