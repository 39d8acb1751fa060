"""HTTP for the API backends (Gemini, OpenAI): keys from the environment, timeouts, retries with back-off,
rate limits (429 + ``Retry-After`` / ``retry-after-ms`` / Google's ``RetryInfo.retryDelay``), a client-side
request rate, and a JSONL log of every request and response with the key and the image data left out.

Errors are one line: :class:`MissingKeyError` names the environment variable; :class:`APIError` names the
provider, the HTTP status and the provider's own message.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class APIError(RuntimeError):
    """An API call failed for good (after the retries, or at once for a non-retryable status)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status, self.retryable = status, retryable


class MissingKeyError(APIError):
    pass


class GenerationRefused(APIError):
    """The provider answered but returned no image (safety block, text-only reply): not retried."""


def api_key(env_var: str, who: str, option: str) -> str:
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise MissingKeyError(f"{who} needs an API key: set the environment variable {env_var} "
                              f"(or name another variable with {option})")
    return key


# --------------------------------------------------------------------------- redaction for the log
_B64 = re.compile(r"^[A-Za-z0-9+/=\s]{200,}$")


def redact(obj: Any, secrets: list[str]) -> Any:
    """A copy of a JSON-like object with secrets masked and base64 blobs replaced by their length and hash."""
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes sha256:{hashlib.sha256(obj).hexdigest()[:12]}>"
    if isinstance(obj, str):
        if len(obj) >= 200 and _B64.match(obj):
            return f"<base64 {len(obj)} chars sha256:{hashlib.sha256(obj.encode()).hexdigest()[:12]}>"
        for s in secrets:
            if s:
                obj = obj.replace(s, "***")
        return obj
    return obj


_SECRET_HEADERS = {"authorization", "x-goog-api-key", "api-key", "x-api-key", "cookie"}


def _headers_for_log(headers: dict, secrets: list[str]) -> dict:
    return {k: ("***" if k.lower() in _SECRET_HEADERS else redact(str(v), secrets)) for k, v in headers.items()}


# --------------------------------------------------------------------------- retry timing
def retry_after_seconds(headers: dict, body: Any) -> float | None:
    """The server's own wait, if it gave one: ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date),
    or Google's ``error.details[].retryDelay`` ("12.7s")."""
    h = {k.lower(): v for k, v in (headers or {}).items()}
    if "retry-after-ms" in h:
        try:
            return max(0.0, float(h["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    if "retry-after" in h:
        v = str(h["retry-after"]).strip()
        try:
            return max(0.0, float(v))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(v)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    if isinstance(body, dict):
        details = (body.get("error") or {}).get("details") if isinstance(body.get("error"), dict) else None
        for d in details or []:
            if isinstance(d, dict) and "retryDelay" in d:
                m = re.match(r"^\s*([0-9.]+)s\s*$", str(d["retryDelay"]))
                if m:
                    return float(m[1])
    return None


def provider_message(body: Any, text: str) -> str:
    """The human part of an error body: Google's and OpenAI's ``{"error": {"message": ...}}``."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        e = body["error"]
        parts = [str(e.get(k)) for k in ("status", "code", "type") if e.get(k) not in (None, "")]
        msg = str(e.get("message") or "").strip().splitlines()
        return (" ".join(dict.fromkeys(parts)) + ": " if parts else "") + (msg[0] if msg else "")
    return (text or "").strip().splitlines()[0][:300] if text and text.strip() else ""


class RateLimiter:
    """At most ``per_minute`` request starts per minute (evenly spaced), shared by the threads of a process."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 60.0 / per_minute if per_minute and per_minute > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


class HTTPClient:
    """``post(url, json=... | data=..., files=...)`` -> the decoded JSON body, with retries.

    ``timeout`` is (connect, read) seconds; a read timeout counts as a retryable failure. The wait before
    attempt ``n`` is the server's ``Retry-After`` when it sent one, else ``backoff * 2**n`` with jitter, at most
    ``max_backoff``. Each attempt is one JSON line in ``log_path`` (no key, no image data).
    """

    def __init__(self, provider: str, *, secrets: list[str], timeout: tuple[float, float] = (10.0, 120.0),
                 max_retries: int = 5, backoff: float = 2.0, max_backoff: float = 60.0,
                 requests_per_minute: float = 0.0, log_path: str | os.PathLike | None = None,
                 sleep: Callable[[float], None] = time.sleep, session=None):
        import requests

        self.provider, self.secrets = provider, [s for s in secrets if s]
        self.timeout, self.max_retries = tuple(timeout), max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.sleep = sleep
        self.limiter = RateLimiter(requests_per_minute, sleep=sleep)
        self.session = session or requests.Session()
        self.log_path = Path(log_path) if log_path else None
        self._log_lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0, "timeouts": 0}

    def _log(self, entry: dict) -> None:
        if self.log_path is None:
            return
        line = json.dumps(redact(entry, self.secrets), ensure_ascii=False)
        for s in self.secrets:  # belt and braces: the key never reaches the file
            line = line.replace(s, "***")
        with self._log_lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def _redact_url(self, url: str) -> str:
        url = re.sub(r"([?&](key|api_key|apikey)=)[^&]+", r"\1***", url)
        return redact(url, self.secrets)

    def post(self, url: str, *, headers: dict, json_body: dict | None = None, data: dict | None = None,
             files: dict | None = None, log_request: dict | None = None) -> tuple[dict, dict]:
        """(decoded body, info {attempts, elapsed_s, status}). ``log_request`` is what the log shows of the
        request (default: ``json_body`` / ``data`` redacted)."""
        import requests

        shown = log_request if log_request is not None else (json_body if json_body is not None else data)
        last = ""
        t_start = time.monotonic()
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            t0 = time.monotonic()
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "provider": self.provider, "method": "POST",
                     "url": self._redact_url(url), "attempt": attempt, "request_headers": _headers_for_log(
                         headers, self.secrets), "request": shown}
            self.stats["requests"] += 1
            wait = None
            try:
                r = self.session.post(url, headers=headers, json=json_body, data=data, files=files,
                                      timeout=self.timeout)
            except requests.Timeout as e:
                self.stats["timeouts"] += 1
                last = f"timed out after {self.timeout[1]:g} s ({type(e).__name__})"
                self._log({**entry, "error": last, "elapsed_s": round(time.monotonic() - t0, 3)})
            except requests.ConnectionError as e:
                last = f"connection failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                self._log({**entry, "error": last, "elapsed_s": round(time.monotonic() - t0, 3)})
            else:
                try:
                    body = r.json()
                except ValueError:
                    body = None
                elapsed = round(time.monotonic() - t0, 3)
                self._log({**entry, "status": r.status_code, "elapsed_s": elapsed,
                           "response_headers": _headers_for_log(dict(r.headers), self.secrets),
                           "response": body if body is not None else r.text[:2000]})
                if 200 <= r.status_code < 300:
                    if not isinstance(body, dict):
                        raise APIError(f"{self.provider}: HTTP {r.status_code} but the body is not a JSON object "
                                       f"({(r.text or '')[:120]!r})", r.status_code)
                    return body, {"attempts": attempt + 1, "elapsed_s": round(time.monotonic() - t_start, 3),
                                  "status": r.status_code}
                msg = provider_message(body, r.text)
                last = f"HTTP {r.status_code}" + (f": {msg}" if msg else "")
                if r.status_code == 429 and "insufficient_quota" in json.dumps(body or {}):
                    raise APIError(f"{self.provider}: {last} (billing quota exhausted; not retried)", 429)
                if r.status_code not in RETRY_STATUS:
                    raise APIError(f"{self.provider}: {last}", r.status_code)
                if r.status_code == 429:
                    self.stats["rate_limited"] += 1
                wait = retry_after_seconds(dict(r.headers), body)
            if attempt == self.max_retries:
                break
            if wait is None:
                wait = self.backoff * (2 ** attempt) * (0.5 + random.random() / 2)
            self.stats["retries"] += 1
            self.sleep(min(wait, self.max_backoff))
        raise APIError(f"{self.provider}: gave up after {self.max_retries + 1} attempts: {last}", retryable=True)
