"""Launch settings of ``ggt-ir reproduce``: how a training (or an evaluation) is started.

``accelerate:`` in a table file (all rows) or a row (that row), or ``--accelerate-config FILE`` on the command
line (accelerate's own YAML, passed as ``--config_file``; it wins over the table's process settings)::

    accelerate: {num_processes: 8}                                  # one node, 8 GPUs
    accelerate: {num_processes: 16, num_machines: 2}                # two nodes (rank / address from Slurm)
    accelerate: {config_file: options/accelerate/fsdp_bf16_8gpu.yaml}
    accelerate: {num_processes: 1, cpu: true}                       # CPU (tests, the demo)
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ggt_ir.config import at_least, choice, to_typed

ARMS = {"existing": "Existing", "synthetic": "Synthetic", "ggt100k": "GGT-100K"}


@dataclass
class AccelerateOptions:
    launcher: str = choice("accelerate", "accelerate", "python")  # python: `python train.py` in one process
    config_file: Optional[str] = None  # accelerate's config (FSDP / DeepSpeed / multi-node ...)
    num_processes: Optional[int] = None  # total over all machines; default 1 (or the config file's)
    num_machines: Optional[int] = None
    machine_rank: Optional[int] = None  # default on N machines: $SLURM_NODEID / $MACHINE_RANK
    main_process_ip: Optional[str] = None  # default on N machines: $MASTER_ADDR
    main_process_port: Optional[int] = None  # default on N machines: $MASTER_PORT or 29500
    mixed_precision: Optional[str] = None  # no | fp16 | bf16 (the option file's train.mixed_precision also applies)
    cpu: bool = False  # CPU processes (gloo)
    dynamo_backend: str = "no"
    gpu_ids: Optional[str] = None
    extra_args: List[str] = field(default_factory=list)  # more `accelerate launch` flags, as given
    env: Dict[str, str] = field(default_factory=dict)  # environment variables for the launched processes


def parse_accelerate(*blocks: dict, src: str) -> AccelerateOptions:
    """Merge launch blocks (later ones win) into typed settings; an unknown key names the closest valid one."""
    merged: dict = {}
    for b in blocks:
        merged.update({k: v for k, v in (b or {}).items()})
    return to_typed(AccelerateOptions, merged, src, prefix="accelerate.")


def processes(a: AccelerateOptions) -> int:
    return int(a.num_processes or 1)


def machines(a: AccelerateOptions) -> int:
    return int(a.num_machines or 1)


def _accelerate_exe() -> str:
    exe = Path(sys.executable).with_name("accelerate")
    return str(exe) if exe.is_file() else "accelerate"


def launch_command(a: AccelerateOptions, script: list[str], module: bool = False) -> tuple[list[str], dict]:
    """(argv, extra environment) that start ``script`` (a .py path or, with ``module``, ``-m pkg ...``)."""
    env = dict(a.env)
    if a.launcher == "python":
        if processes(a) > 1 or machines(a) > 1:
            raise ValueError("accelerate.launcher 'python' starts one process; use launcher 'accelerate' for more")
        return [sys.executable, *(["-m"] if module else []), *script], env
    argv = [_accelerate_exe(), "launch"]
    if a.config_file:
        argv += ["--config_file", str(a.config_file)]
    n, m = a.num_processes, a.num_machines
    if n is not None or not a.config_file:
        argv += ["--num_processes", str(n or 1)]
    if m is not None or not a.config_file:
        argv += ["--num_machines", str(m or 1)]
    if (m or 1) > 1:
        rank = a.machine_rank if a.machine_rank is not None else os.environ.get("SLURM_NODEID",
                                                                                os.environ.get("MACHINE_RANK"))
        ip = a.main_process_ip or os.environ.get("MASTER_ADDR")
        if rank is None or not ip:
            raise ValueError(f"accelerate: {m} machines need machine_rank and main_process_ip (or $SLURM_NODEID and "
                             "$MASTER_ADDR, which the emitted Slurm script sets)")
        argv += ["--machine_rank", str(rank), "--main_process_ip", str(ip),
                 "--main_process_port", str(a.main_process_port or os.environ.get("MASTER_PORT", 29500))]
    elif a.main_process_port:
        argv += ["--main_process_port", str(a.main_process_port)]
    if a.mixed_precision:  # else the option file's train.mixed_precision decides (a launch flag would override it)
        argv += ["--mixed_precision", a.mixed_precision]
    if not a.config_file:
        argv += ["--dynamo_backend", a.dynamo_backend]
    if a.gpu_ids:
        argv += ["--gpu_ids", a.gpu_ids]
    if a.cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        # accelerate's --cpu starts ONE process whatever --num_processes says; several CPU processes need
        # --multi_gpu with ACCELERATE_USE_CPU (docs: dependencies.md, "2 processes on CPU")
        argv += ["--multi_gpu"] if (n or 1) > 1 else ["--cpu"]
    elif (n or 1) > 1 and not a.config_file and (m or 1) == 1:
        argv += ["--multi_gpu"]
    argv += list(a.extra_args)
    argv += ["-m", *script] if module else list(script)
    return argv, env


@dataclass
class SlurmOptions:
    job_name: str = "ggt-ir"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: str = "48:00:00"
    cpus_per_task: int = at_least(8, 1)
    mem: Optional[str] = None
    gpus_per_node: Optional[int] = None  # default: processes / machines of the training's launch settings
    eval_gpus: int = at_least(1, 0)
    eval_time: str = "12:00:00"
    setup: List[str] = field(default_factory=list)  # shell lines run first (module load, source .venv/bin/activate)
    extra: List[str] = field(default_factory=list)  # more #SBATCH lines, e.g. "--constraint=a100"
    log_dir: str = "slurm_logs"


__all__ = ["ARMS", "AccelerateOptions", "SlurmOptions", "launch_command", "parse_accelerate", "processes", "machines"]
