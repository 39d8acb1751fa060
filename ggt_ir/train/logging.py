"""Console + file logging in BasicSR's compact style, safe beside a tqdm progress bar."""
from __future__ import annotations

import datetime
import logging
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # logging must never kill training
            self.handleError(record)


def wandb_mode(run_dir: Path) -> tuple[str | None, str]:
    """(the WANDB_MODE to set, or None to leave wandb's own choice; a line for the log).

    Offline only when no credentials are configured at all: ``WANDB_API_KEY``, ``wandb login`` (~/.netrc) or
    wandb's settings file all count, as wandb itself checks them (``wandb.login(prompt=False, verify=False)``:
    no prompt, no network). ``WANDB_MODE`` set by the user is always kept."""
    if os.environ.get("WANDB_MODE"):
        return None, f"wandb: mode {os.environ['WANDB_MODE']} (from WANDB_MODE)"
    import wandb

    try:
        logged_in = bool(wandb.login(prompt=False, verify=False))
    except Exception as e:  # noqa: BLE001 - a malformed key must not stop training; say so and log offline
        logged_in, why = False, f"wandb credentials could not be read ({type(e).__name__}: {e})"
    else:
        why = "no W&B API key is configured (WANDB_API_KEY, or `wandb login`)"
    if logged_in:
        return None, "wandb: online (credentials found)"
    return "offline", (f"wandb: {why}, so this run logs offline to {run_dir}; upload it later with "
                       f"`wandb sync {run_dir}/offline-run-*`")


def run_logger_name(name: str) -> str:
    return f"ggt_ir.run.{name}"


def setup_logger(name: str, log_file: Path | None, is_main: bool) -> logging.Logger:
    log = logging.getLogger(run_logger_name(name))
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    h = _TqdmHandler()
    h.setFormatter(fmt)
    log.addHandler(h)
    if is_main and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


def message_line(name: str, epoch, it: int, lr: float, eta_s: float, iter_time: float, data_time: float,
                 values: dict[str, float]) -> str:
    """``[name][epoch:  1, iter:     100, lr:(2.000e-04)] [eta: 0:01:00, time (data): 0.100 (0.002)] l_pix: 1.2e-02``"""
    ep = f"{epoch:3d}" if isinstance(epoch, int) else "  -"
    eta = str(datetime.timedelta(seconds=int(max(0, eta_s))))
    vals = " ".join(f"{k}: {v:.4e}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())
    return (f"[{name[:12]}..][epoch:{ep}, iter:{it:8,d}, lr:({lr:.3e})] "
            f"[eta: {eta}, time (data): {iter_time:.3f} ({data_time:.3f})] {vals}")


def results_table(rows: list[tuple[str, str, float, float, float, int]]) -> str:
    """rows: (val set, metric, LQ input, last, best, best iter) -> aligned text table."""
    head = ("val set", "metric", "LQ input", "model (last)", "model (best)", "best @ iter")
    cells = [head] + [(a, b, f"{c:.4f}", f"{d:.4f}", f"{e:.4f}", str(f)) for a, b, c, d, e, f in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
