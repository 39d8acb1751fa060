"""The API backends against local servers on 127.0.0.1 that speak their wire formats (tests/data/synth/*.json):
request shapes, image round trips, costs from usage, 429 + Retry-After / RetryInfo, 5xx back-off, timeouts,
non-retryable errors, missing keys, logs without the key, refusals, and a whole run through the pipeline."""
from __future__ import annotations

import base64
import copy
import json
import threading
import time
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from ggt_ir.synth.generators.base import GenContext
from ggt_ir.synth.http import APIError, GenerationRefused, HTTPClient, MissingKeyError, RateLimiter, retry_after_seconds

DATA = Path(__file__).parent / "data" / "synth"
KEY = "test-key-SECRET-1234567890"


def fixture(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def png_b64(img: np.ndarray) -> str:
    u8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return base64.b64encode(cv2.imencode(".png", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()


def decode_png(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) / 255.0


def replace(obj, token: str, value):
    if isinstance(obj, dict):
        return {k: replace(v, token, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [replace(v, token, value) for v in obj]
    return value if obj == token else obj


def key_shape(obj):
    """The nested key structure of a JSON value (values left out), to compare with a recorded request."""
    if isinstance(obj, dict):
        return {k: key_shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [key_shape(v) for v in obj]
    return type(obj).__name__


class FakeAPI:
    """Speaks Gemini's generateContent and OpenAI's /v1/images/edits. ``script`` holds what the next requests
    get: ``("json", status, body, headers)``, ``("sleep", seconds)`` (then the default answer), or nothing (the
    default answer: the input image, blurred, in the provider's success shape; a VLM request gets ``text``)."""

    def __init__(self):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.text = "Remove the rain streaks; keep everything else."  # VLM answer with one image (a prompt)
        self.judge_text = '{"verdict": "accept", "reasons": ["looks fine"]}'  # ... with two images (a verdict)
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = {"path": self.path, "headers": dict(self.headers), "raw": body}
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("multipart/form-data"):
                    msg = BytesParser(policy=email_policy).parsebytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
                    req["fields"], req["files"] = {}, {}
                    for part in msg.iter_parts():
                        name = part.get_param("name", header="content-disposition")
                        fname = part.get_param("filename", header="content-disposition")
                        data = part.get_payload(decode=True)
                        if fname:
                            req["files"][name] = {"filename": fname, "content_type": part.get_content_type(),
                                                  "data": data}
                        else:
                            req["fields"][name] = data.decode()
                else:
                    req["json"] = json.loads(body or b"{}")
                with api._lock:
                    api.requests.append(req)
                    action = api.script.pop(0) if api.script else None
                if action and action[0] == "sleep":
                    time.sleep(action[1])
                    action = None
                if action and action[0] == "json":
                    _, status, out, headers = (*action, {})[:4]
                    return self._send(status, out, headers)
                return self._send(200, api.success(req), {})

            def _send(self, status, obj, headers):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def success(self, req) -> dict:
        if req["path"].endswith(":generateContent"):
            j = req["json"]
            modalities = j.get("generationConfig", {}).get("responseModalities", ["TEXT"])
            images = [p["inline_data"] for p in j["contents"][0]["parts"] if "inline_data" in p]
            if "IMAGE" not in modalities:
                return replace(fixture("gemini_text_response.json"), "<TEXT>",
                               self.judge_text if len(images) >= 2 else self.text)
            img = cv2.GaussianBlur(decode_png(base64.b64decode(images[0]["data"])).astype(np.float32), (0, 0), 0.8)
            ratio = j["generationConfig"].get("imageConfig", {}).get("aspectRatio")
            if ratio:  # the real service answers in the aspect ratio it was asked for
                a, b = (int(v) for v in ratio.split(":"))
                img = cv2.resize(img, (img.shape[1], round(img.shape[1] * b / a)), interpolation=cv2.INTER_AREA)
            return replace(fixture("gemini_generate_content_response.json"), "<BASE64_PNG>", png_b64(img))
        img = cv2.GaussianBlur(decode_png(req["files"]["image"]["data"]).astype(np.float32), (0, 0), 0.8)
        sw, sh = (int(v) // 16 for v in req["fields"]["size"].split("x"))  # the requested size, 1/16 to stay small
        img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        return replace(fixture("openai_images_edit_response.json"), "<BASE64_PNG>", png_b64(img))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    s = FakeAPI()
    yield s
    s.close()


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def lq_image(w=64, h=48, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base, 0, 1)


def gemini(api, tmp_path, **kw):
    from ggt_ir.synth.generators.gemini import GeminiImageGenerator, GeminiImageOptions

    opts = GeminiImageOptions(name="nb2", base_url=api.url, backoff=0.01, **kw)
    g = GeminiImageGenerator(opts, GenContext(api_log=tmp_path / "api.jsonl"))
    g.http.sleep = g._sleeps = []  # record the waits instead of sleeping
    g.http.sleep = g._sleeps.append
    return g


def openai(api, tmp_path, **kw):
    from ggt_ir.synth.generators.openai_images import OpenAIImageGenerator, OpenAIImageOptions

    opts = OpenAIImageOptions(name="gpt", base_url=api.url, backoff=0.01, **kw)
    g = OpenAIImageGenerator(opts, GenContext(api_log=tmp_path / "api.jsonl"))
    g._sleeps = []
    g.http.sleep = g._sleeps.append
    return g


# --------------------------------------------------------------------------- Gemini
def test_gemini_request_shape_image_roundtrip_and_cost(api, keys, tmp_path):
    g = gemini(api, tmp_path)
    lq = lq_image(64, 48)
    res = g.generate(lq, "Remove the rain.", seed=7)
    req = api.requests[0]
    assert req["path"] == "/v1beta/models/gemini-3.1-flash-image-preview:generateContent"
    assert req["headers"]["x-goog-api-key"] == KEY and "key=" not in req["path"]
    recorded = fixture("gemini_generate_content_request.json")
    assert key_shape(req["json"]) == key_shape(recorded)  # the documented request shape, key by key
    cfg = req["json"]["generationConfig"]
    assert cfg["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"} and cfg["seed"] == 7
    sent = decode_png(base64.b64decode(req["json"]["contents"][0]["parts"][1]["inline_data"]["data"]))
    assert sent.shape == (48, 64, 3) and np.abs(sent - lq).max() <= 1 / 255 + 1e-6
    assert res.image.shape == (48, 64, 3) and res.expected_aspect == pytest.approx(4 / 3)
    assert np.abs(res.image - cv2.GaussianBlur(lq, (0, 0), 0.8)).mean() < 0.01  # the server's answer, decoded
    # cost from usageMetadata: 1307 prompt tokens, 10 text + 1120 image output tokens at the default prices
    expected = 1307 * 0.50e-6 + 10 * 3.00e-6 + 1120 * 60e-6
    assert res.cost_usd == pytest.approx(expected) and res.cost_usd == pytest.approx(0.0679, abs=1e-4)
    assert res.meta["model"] == "gemini-3.1-flash-image-preview" and res.meta["attempts"] == 1


def test_gemini_429_waits_for_retry_info_then_succeeds(api, keys, tmp_path):
    api.script = [("json", 429, fixture("gemini_error_429.json"))]
    g = gemini(api, tmp_path)
    res = g.generate(lq_image(), "x", seed=0)
    assert res.meta["attempts"] == 2 and g._sleeps == [pytest.approx(0.05)]  # the server's retryDelay
    assert g.http.stats["rate_limited"] == 1
    log = [json.loads(line) for line in (tmp_path / "api.jsonl").read_text().splitlines()]
    assert [e["status"] for e in log] == [429, 200] and log[0]["response"]["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_5xx_backs_off_exponentially_then_gives_up_with_one_line(api, keys, tmp_path):
    api.script = [("json", 503, fixture("gemini_error_503.json"))] * 4
    g = gemini(api, tmp_path, max_retries=3)
    with pytest.raises(APIError) as e:
        g.generate(lq_image(), "x", seed=0)
    msg = str(e.value)
    assert "\n" not in msg and "gave up after 4 attempts" in msg and "HTTP 503" in msg and "overloaded" in msg
    assert len(api.requests) == 4 and len(g._sleeps) == 3
    for n, w in enumerate(g._sleeps):  # backoff * 2**n with jitter in [0.5, 1)
        assert 0.01 * 2 ** n * 0.5 <= w <= 0.01 * 2 ** n


def test_non_retryable_400_fails_at_once(api, keys, tmp_path):
    api.script = [("json", 400, fixture("gemini_error_400.json"))]
    g = gemini(api, tmp_path)
    with pytest.raises(APIError) as e:
        g.generate(lq_image(), "x", seed=0)
    assert len(api.requests) == 1 and e.value.status == 400
    assert str(e.value) == "gemini:gemini-3.1-flash-image-preview: HTTP 400: INVALID_ARGUMENT 400: API key not valid. " \
                           "Please pass a valid API key."


def test_timeout_is_retried_and_then_reported(api, keys, tmp_path):
    api.script = [("sleep", 1.5)]  # the first answer comes too late; the retry gets the normal answer
    g = gemini(api, tmp_path, timeout=0.4)
    res = g.generate(lq_image(), "x", seed=0)
    assert res.meta["attempts"] == 2 and g.http.stats["timeouts"] == 1
    api.script = [("sleep", 1.5), ("sleep", 1.5)]
    g2 = gemini(api, tmp_path, timeout=0.4, max_retries=1)
    with pytest.raises(APIError, match=r"gave up after 2 attempts: timed out after 0.4 s"):
        g2.generate(lq_image(), "x", seed=0)


def test_refusal_is_not_retried_and_keeps_its_cost(api, keys, tmp_path):
    api.script = [("json", 200, fixture("gemini_blocked_response.json"))]
    g = gemini(api, tmp_path)
    with pytest.raises(GenerationRefused, match="finishReason IMAGE_SAFETY") as e:
        g.generate(lq_image(), "x", seed=0)
    assert len(api.requests) == 1 and e.value.cost_usd == pytest.approx(1307 * 0.50e-6)


def test_missing_key_names_the_variable(monkeypatch, tmp_path):
    from ggt_ir.synth.generators.gemini import GeminiImageGenerator, GeminiImageOptions
    from ggt_ir.synth.generators.openai_images import OpenAIImageGenerator, OpenAIImageOptions

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("MY_OPENAI", raising=False)
    with pytest.raises(MissingKeyError, match="set the environment variable GEMINI_API_KEY"):
        GeminiImageGenerator(GeminiImageOptions(name="nb2"), GenContext())
    with pytest.raises(MissingKeyError, match="MY_OPENAI"):
        OpenAIImageGenerator(OpenAIImageOptions(name="g", api_key_env="MY_OPENAI"), GenContext())


def test_missing_key_through_the_cli_is_one_line(monkeypatch, tmp_path, capsys):
    from ggt_ir.synth.cli import main

    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.zeros((16, 16, 3), np.uint8))
    opt = tmp_path / "o.yml"
    opt.write_text(json.dumps({"name": "k", "input": {"path": str(tmp_path / "in")},
                               "output": {"root": str(tmp_path / "runs")},
                               "prompting": {"fixed": {"default": "restore"}},
                               "generators": [{"type": "GeminiImage", "name": "nb2"}]}))
    assert main(["-opt", str(opt)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GEMINI_API_KEY" in err and "nb2" in err


def test_log_holds_no_key_and_no_image_data(api, keys, tmp_path):
    g = gemini(api, tmp_path)
    o = openai(api, tmp_path)
    g.generate(lq_image(), "x", seed=0)
    o.generate(lq_image(), "x", seed=0)
    text = (tmp_path / "api.jsonl").read_text()
    assert KEY not in text
    log = [json.loads(line) for line in text.splitlines()]
    assert log[0]["request_headers"]["x-goog-api-key"] == "***"
    assert log[1]["request_headers"]["Authorization"] == "***"
    assert log[0]["request"]["contents"][0]["parts"][1]["inline_data"]["data"].startswith("<base64 ")
    assert log[0]["response"]["candidates"][0]["content"]["parts"][1]["inlineData"]["data"].startswith("<base64 ")
    assert log[1]["request"]["image"].startswith("<") and log[1]["response"]["data"][0]["b64_json"].startswith("<base64")
    assert max(len(line) for line in text.splitlines()) < 5000


# --------------------------------------------------------------------------- OpenAI
def test_openai_sizes_follow_the_lq_aspect(api, keys, tmp_path):
    from ggt_ir.synth.generators.openai_images import flexible_size

    assert flexible_size(1024, 768) == ("1184x896", pytest.approx(1184 / 896))  # gpt-image-2: multiples of 16
    for w, h in ((640, 480), (300, 1000), (5000, 100)):
        size, a = flexible_size(w, h)
        sw, sh = (int(v) for v in size.split("x"))
        assert sw % 16 == sh % 16 == 0 and sw * sh >= 655_360 and max(sw, sh) <= 3840
    o2 = openai(api, tmp_path)  # gpt-image-2
    o15 = openai(api, tmp_path, model="gpt-image-1.5")
    lq = lq_image(64, 48)
    assert o2.form(lq, "p")[0]["size"] == "1184x896"
    assert o15.form(lq, "p")[0]["size"] == "1536x1024"  # the nearest of the three fixed sizes


def test_openai_multipart_request_and_cost(api, keys, tmp_path):
    o = openai(api, tmp_path, model="gpt-image-1.5")
    lq = lq_image(72, 48)  # 3:2 -> 1536x1024
    res = o.generate(lq, "Remove the rain.", seed=3)
    req = api.requests[0]
    assert req["path"] == "/v1/images/edits" and req["headers"]["Authorization"] == f"Bearer {KEY}"
    rec = fixture("openai_images_edit_request.json")
    assert set(req["fields"]) == set(rec["fields"]) and req["fields"]["size"] == "1536x1024"
    assert req["fields"]["model"] == "gpt-image-1.5"
    assert {k: {kk: v[kk] for kk in ("filename", "content_type")} for k, v in req["files"].items()} == rec["files"]
    assert decode_png(req["files"]["image"]["data"]).shape == (48, 72, 3)
    assert res.expected_aspect == pytest.approx(1.5) and res.image.shape == (64, 96, 3)  # 1536x1024 / 16
    # usage: 50 text + 1240 image input tokens, 1372 output tokens at gpt-image-2's default prices
    assert res.cost_usd == pytest.approx((50 * 5 + 1240 * 8 + 1372 * 30) / 1e6)
    assert o.seeded is False


def test_openai_retry_after_headers(api, keys, tmp_path):
    api.script = [("json", 429, fixture("openai_error_429.json"), {"Retry-After": "2"}),
                  ("json", 429, fixture("openai_error_429.json"), {"retry-after-ms": "250"})]
    o = openai(api, tmp_path)
    o.generate(lq_image(), "x", seed=0)
    assert o._sleeps == [2.0, 0.25] and len(api.requests) == 3


def test_openai_insufficient_quota_and_moderation_are_not_retried(api, keys, tmp_path):
    api.script = [("json", 429, fixture("openai_error_quota.json"))]
    o = openai(api, tmp_path)
    with pytest.raises(APIError, match="billing quota exhausted; not retried"):
        o.generate(lq_image(), "x", seed=0)
    api.script = [("json", 400, fixture("openai_error_400.json"))]
    with pytest.raises(APIError, match="HTTP 400: moderation_blocked image_generation_user_error: Your request was "
                                       "rejected"):
        o.generate(lq_image(), "x", seed=0)
    assert len(api.requests) == 2


# --------------------------------------------------------------------------- small parts
def test_retry_after_parsing():
    assert retry_after_seconds({"Retry-After": "3"}, None) == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500"}, None) == 1.5
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds({"Retry-After": date}, None) <= 31
    assert retry_after_seconds({}, fixture("gemini_error_429.json")) == pytest.approx(0.05)
    assert retry_after_seconds({}, {"error": "text"}) is None


def test_rate_limiter_spaces_requests():
    now = [100.0]
    waits = []
    lim = RateLimiter(120, clock=lambda: now[0], sleep=waits.append)  # 2 per second
    for _ in range(3):
        lim.wait()
    assert waits == [pytest.approx(0.5), pytest.approx(1.0)]


def test_http_client_connection_refused_is_retried(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here after the with block
    sleeps = []
    c = HTTPClient("x", secrets=[KEY], max_retries=2, backoff=0.01, sleep=sleeps.append, log_path=tmp_path / "l")
    with pytest.raises(APIError, match="gave up after 3 attempts: connection failed"):
        c.post(f"http://127.0.0.1:{port}/v1/x?key={KEY}", headers={}, json_body={})
    assert len(sleeps) == 2 and KEY not in (tmp_path / "l").read_text()


def test_gemini_vlm_text_and_json_mode(api, keys, tmp_path):
    from ggt_ir.synth.vlm import GeminiVLM, GeminiVLMOptions

    v = GeminiVLM(GeminiVLMOptions(base_url=api.url), GenContext(api_log=tmp_path / "api.jsonl"))
    api.text = "Remove the rain streaks; keep the red car."
    r = v.chat([lq_image()], "write an instruction")
    assert r.text == api.text and r.cost_usd == pytest.approx((1400 * 0.30 + 60 * 2.50) / 1e6)
    v.chat([lq_image(), lq_image(seed=1)], "judge", want_json=True)
    cfg = api.requests[1]["json"]["generationConfig"]
    assert cfg["responseMimeType"] == "application/json" and len(api.requests[1]["json"]["contents"][0]["parts"]) == 3
    assert api.requests[0]["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"


# --------------------------------------------------------------------------- the pipeline over the APIs
def test_run_with_api_generators_adaptive_prompts_and_vlm_judge(api, keys, tmp_path, capsys):
    """Gemini + OpenAI generators, a Gemini VLM writing the prompts and judging, all through the local server;
    one rate-limited request on the way. Costs add up in the manifest and the progress line shows them."""
    from accelerate import PartialState

    from ggt_ir.synth.options import load_synth_options
    from ggt_ir.synth.pipeline import run_synth

    src = tmp_path / "in" / "rain"
    src.mkdir(parents=True)
    for i in range(2):
        u8 = (lq_image(64, 48, seed=i) * 255).astype(np.uint8)
        cv2.imwrite(str(src / f"p{i}.png"), u8)
    base = Path(__file__).resolve().parents[1] / "options" / "synth" / "_base.yml"
    opt_file = tmp_path / "o.yml"
    opt_file.write_text(json.dumps({
        "include": str(base), "name": "api", "input": {"path": str(tmp_path / "in")},
        "output": {"root": str(tmp_path / "runs")},
        "prompting": {"mode": "adaptive", "vlm": {"type": "GeminiVLM", "base_url": api.url}},
        "generators": [{"type": "GeminiImage", "name": "nb2", "base_url": api.url, "backoff": 0.01},
                       {"type": "OpenAIImage", "name": "gpt", "base_url": api.url, "backoff": 0.01}],
        "qc": {"vlm": {"enabled": True}}}))
    opt = load_synth_options(str(opt_file))
    api.text = "Remove the rain streaks and keep everything else."
    api.script = [("json", 429, fixture("gemini_error_429.json"))]
    logs = []
    run_synth(opt, PartialState(), log=logs.append)
    recs = [json.loads(line) for line in (tmp_path / "runs" / "api" / "manifest.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert r["prompt_info"]["source"] == "adaptive" and r["status"] == "accepted"
        assert {c["generator"] for c in r["candidates"]} == {"nb2", "gpt"}
        assert all(c["cost_usd"] > 0 for c in r["candidates"])
        assert r["cost_usd"]["total"] == pytest.approx(r["cost_usd"]["generate"] + r["cost_usd"]["vlm_prompt"]
                                                       + r["cost_usd"]["vlm_judge"])
        assert r["prompt"] == api.text and r["candidates"][0]["vlm"][0]["verdict"] == "accept"
        gpt = next(c for c in r["candidates"] if c["generator"] == "gpt")  # 1184x896 / 16 for a 64x48 LQ
        assert gpt["qc1"]["passed"] and gpt["qc1"]["processed"] == ["resized 74x56 -> 64x48"]
        assert (tmp_path / "runs" / "api" / r["hq"]).is_file()
    assert any("| cost $" in line and "for 2)" in line for line in logs)
    api_log = (tmp_path / "runs" / "api" / "logs" / "api-rank0.jsonl").read_text()
    assert KEY not in api_log and '"status": 429' in api_log
    # a rerun pays nothing: every image is done
    n = len(api.requests)
    run_synth(opt, PartialState(), log=logs.append)
    assert len(api.requests) == n
