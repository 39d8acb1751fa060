"""Who decides what both Accelerate and the option file can set (mixed precision, gradient accumulation).

The rule, printed in the start-up banner and documented in docs/training.md:

    command line  >  option file  >  accelerate config  >  default

* command line: ``accelerate launch --mixed_precision bf16`` (or ``--gradient_accumulation_steps``) and
  ``train.py --set train.mixed_precision=bf16``; when both are given they must agree;
* option file: ``train.mixed_precision`` / ``train.gradient_accumulation_steps`` when the file (or a file it
  includes) sets them;
* accelerate config: what ``accelerate launch`` took from ``accelerate config``'s file (or ``--config_file``),
  or an ``ACCELERATE_MIXED_PRECISION`` / ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` set in the environment;
* default: ``no`` and 1.

``accelerate launch`` passes its choice to the script in the environment, which does not say whether it
came from the command line or the config file; we tell them apart by reading the launcher's own command
line (its process is our parent) and its config file. The number of processes is always Accelerate's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ggt_ir.config import OptionsError

RULE = "command line > option file > accelerate config > default"


@dataclass
class Launcher:
    """What the ``accelerate launch`` that started this process was given (empty when there is none)."""

    found: bool = False
    flags: dict = field(default_factory=dict)  # flag name (underscores) -> value, as typed
    config_file: str | None = None
    config: dict = field(default_factory=dict)


def _flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def launcher_args(cmdline: list[str]) -> list[str] | None:
    """The arguments given to ``accelerate launch`` before the script, from the launcher's command line."""
    for i, a in enumerate(cmdline):
        if a == "launch" and i > 0 and Path(cmdline[i - 1]).name.startswith("accelerate"):
            rest = cmdline[i + 1:]
            break
        if a == "accelerate.commands.launch":
            rest = cmdline[i + 1:]
            break
    else:
        return None
    for j, a in enumerate(rest):  # stop at the script: its own arguments are not the launcher's
        if a.endswith(".py") or a in ("-m", "--module"):
            return rest[:j]
    return rest


def read_launcher(cmdline: list[str] | None = None) -> Launcher:
    """The parent ``accelerate launch``'s flags and config file (Linux: /proc); empty when there is none."""
    if cmdline is None:
        try:
            raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
        except OSError:
            return Launcher()
        cmdline = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    args = launcher_args(cmdline)
    if args is None:
        return Launcher()
    flags = {}
    for name in ("mixed_precision", "gradient_accumulation_steps", "num_processes"):
        v = _flag_value(args, (f"--{name}", f"--{name.replace('_', '-')}"))
        if v is not None:
            flags[name] = v
    config_file = _flag_value(args, ("--config_file", "--config-file"))
    if config_file is None and "--cpu" not in args:
        try:
            from accelerate.commands.config import default_config_file

            config_file = default_config_file if os.path.isfile(default_config_file) else None
        except ImportError:
            config_file = None
    config = {}
    if config_file and os.path.isfile(config_file):
        import yaml

        try:
            config = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
    return Launcher(True, flags, config_file, config if isinstance(config, dict) else {})


@dataclass
class Decided:
    value: object
    source: str

    def __str__(self) -> str:
        return f"{self.value} ({self.source})"


def _decide(key: str, file_value, set_value, launcher: Launcher, env_name: str, config_value, default,
            convert, src: str) -> Decided:
    flag = launcher.flags.get(key)
    cli = []
    if flag is not None:
        cli.append((convert(flag), f"command line: accelerate launch --{key}"))
    if set_value is not None:
        cli.append((set_value, f"command line: --set train.{key}"))
    if len({v for v, _ in cli}) > 1:
        raise OptionsError(f"{src}: the command line sets {key} twice, differently: "
                           + " and ".join(f"{v} ({s})" for v, s in cli) + "; give one")
    if cli:
        return Decided(*cli[0])
    if file_value is not None:
        return Decided(file_value, "option file")
    env = os.environ.get(env_name)
    if launcher.found:
        if config_value is not None and launcher.config_file:
            return Decided(convert(config_value), f"accelerate config {launcher.config_file}")
        if env is not None and convert(env) != default:
            return Decided(convert(env), f"accelerate launch ({env_name})")
    elif env is not None:
        return Decided(convert(env), f"environment {env_name}")
    return Decided(default, "default")


def resolve(opt, set_keys: set[str], src: str, launcher: Launcher | None = None) -> dict[str, Decided]:
    """Decide ``train.mixed_precision`` and ``train.gradient_accumulation_steps`` by :data:`RULE`; write the
    decisions into ``opt`` and return them (with their sources, for the banner)."""
    launcher = read_launcher() if launcher is None else launcher
    t = opt.train
    cfg = launcher.config
    mp = _decide("mixed_precision",
                 None if "train.mixed_precision" in set_keys else t.mixed_precision,
                 t.mixed_precision if "train.mixed_precision" in set_keys else None,
                 launcher, "ACCELERATE_MIXED_PRECISION", cfg.get("mixed_precision"), "no",
                 lambda v: str(v).lower(), src)
    ds_cfg = cfg.get("deepspeed_config") if isinstance(cfg.get("deepspeed_config"), dict) else {}
    gas = _decide("gradient_accumulation_steps",
                  None if "train.gradient_accumulation_steps" in set_keys else t.gradient_accumulation_steps,
                  t.gradient_accumulation_steps if "train.gradient_accumulation_steps" in set_keys else None,
                  launcher, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", ds_cfg.get("gradient_accumulation_steps"), 1,
                  int, src)
    if mp.value not in ("no", "fp16", "bf16"):
        raise OptionsError(f"{src}: mixed precision {mp}: expected no, fp16 or bf16")
    if int(gas.value) < 1:
        raise OptionsError(f"{src}: gradient accumulation {gas}: it must be >= 1")
    t.mixed_precision, t.gradient_accumulation_steps = mp.value, int(gas.value)
    return {"mixed precision": mp, "gradient accumulation": gas}


def decided_environment(opt) -> dict[str, str]:
    """The environment Accelerate reads the two settings from, set to the decided values while the
    Accelerator (and a DeepSpeed plugin it creates) is built, so no part of it falls back to another value."""
    return {"ACCELERATE_MIXED_PRECISION": opt.train.mixed_precision,
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": str(opt.train.gradient_accumulation_steps)}
