"""Progress that fits where it goes: a tqdm bar on a terminal; plain periodic lines in a file or a pipe.

A bar redraws itself with ``\\r`` and cursor-movement escapes, which a terminal shows as one moving line
and a log file (nohup, Slurm, ``> log 2>&1``) stores as hundreds of lines of junk. So every progress
display in the package goes through :func:`progress`:

* on a terminal: a tqdm bar;
* anywhere else: a plain line at most every ``GGT_IR_PROGRESS_EVERY`` seconds (default 30) and one when the
  work is done, e.g. ``eval test: 120/500 img (24%), 3.1 img/s, eta 0:02:03`` -- no ``\\r``, no escape codes;
* ``GGT_IR_PROGRESS=bar|lines|off`` forces one of the three.

The returned object has the parts of tqdm's interface the package uses: iteration, ``update``,
``set_postfix``, ``write`` and ``close`` (also as a context manager).
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from typing import Any, Iterable, Optional


def progress_mode(file=None) -> str:
    """``bar`` on a terminal, ``lines`` elsewhere; ``GGT_IR_PROGRESS`` overrides."""
    forced = os.environ.get("GGT_IR_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    stream = file if file is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class LineProgress:
    """tqdm's interface, printing plain lines (see the module docstring)."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", file=None, every_s: Optional[float] = None, final: bool = True,
                 initial: int = 0, silent: bool = False):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.start_n = total, initial, initial
        self.file, self.final, self.silent = file, final, silent
        self.every_s = float(os.environ.get("GGT_IR_PROGRESS_EVERY", 30)) if every_s is None else every_s
        self.t0 = self.last = time.time()
        self.postfix = ""
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _out(self):
        return self.file if self.file is not None else sys.stderr

    def line(self) -> str:
        elapsed = time.time() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", eta {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}{pct}, {rate:.3g} {self.unit}/s{eta}{post}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if not self.silent and now - self.last >= self.every_s and (not self.total or self.n < self.total):
            self.last = now
            self.write(self.line())

    def refresh(self) -> None:
        self.update(0)

    def set_postfix(self, values: Any = None, refresh: bool = True, **kw) -> None:
        items = {**(values or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, msg: str, file=None) -> None:
        out = file if file is not None else self._out()
        print(msg, file=out, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.silent and self.final and self.n > self.start_n:
            self.write(f"{self.desc}: {self.n}{'/' + str(self.total) if self.total else ''} {self.unit} done in "
                       f"{_duration(time.time() - self.t0)}{', ' + self.postfix if self.postfix else ''}")


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             enabled: bool = True, file=None, lines: bool = True, final: bool = True, initial: int = 0,
             leave: bool = True, every_s: Optional[float] = None, **tqdm_kwargs):
    """A progress display for ``iterable`` (or ``total`` steps): a tqdm bar on a terminal, plain lines
    elsewhere (``lines=False``: nothing, when the caller logs its own periodic lines). ``enabled=False``
    (e.g. on ranks other than the first) shows nothing."""
    mode = progress_mode(file) if enabled else "off"
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, initial=initial, leave=leave,
                    dynamic_ncols=True, **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=file, every_s=every_s, final=final,
                        initial=initial, silent=(mode == "off" or not lines))
