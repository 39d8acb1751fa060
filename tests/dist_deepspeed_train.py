"""Run under a 2-process CPU launch: the real trainer with accelerate's DeepSpeed code path (ZeRO-2 or -3) on gloo.

``accelerate launch --use_deepspeed`` on a machine without accelerators starts two processes that each see one
rank (its DeepSpeed switch needs a non-CPU backend), so this driver builds each Accelerator as the multi-process
CPU launch does (MULTI_CPU, gloo, two ranks), initialises deepspeed.comm on that process group (DeepSpeed's CPU
accelerator uses gloo) and turns the accelerator into a DeepSpeed one with the plugin of the shipped config
(options/accelerate/deepspeed_zero{2,3}_bf16.yaml, read here; mixed precision off on CPU). After that it is the
code a GPU run executes: the step's batch figures, ``deepspeed.initialize`` inside ``accelerator.prepare``,
backward/step through the engine, validation, ``save_state`` / ``load_state`` (DeepSpeed's checkpoint), the
ZeRO-3 LoRA gather for the export.

    python tests/dist_deepspeed_train.py -opt X.yml --zero 2|3 [--resume latest] [--stop-after N] [--report out]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def deepspeed_plugin(stage: int):
    from accelerate.utils import DeepSpeedPlugin

    cfg = yaml.safe_load((ROOT / f"options/accelerate/deepspeed_zero{stage}_bf16.yaml").read_text())["deepspeed_config"]
    return DeepSpeedPlugin(zero_stage=cfg["zero_stage"], gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
                           gradient_clipping=cfg["gradient_clipping"], offload_optimizer_device=cfg["offload_optimizer_device"],
                           offload_param_device=cfg["offload_param_device"], zero3_init_flag=cfg["zero3_init_flag"],
                           zero3_save_16bit_model=cfg.get("zero3_save_16bit_model", False))


def patch_accelerator(stage: int) -> None:
    import accelerate
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    base = accelerate.Accelerator

    class DeepSpeedOnCPU(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            assert self.distributed_type == DistributedType.MULTI_CPU and self.num_processes == 2
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
            plugin = deepspeed_plugin(stage)
            plugin.set_mixed_precision(self.state.mixed_precision)
            plugin.select(_from_accelerator_state=True)
            self.state.deepspeed_plugins = {"default": plugin}
            PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
            self.state.distributed_type = DistributedType.DEEPSPEED

    accelerate.Accelerator = DeepSpeedOnCPU


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-opt", required=True)
    p.add_argument("--zero", type=int, choices=[2, 3], required=True)
    p.add_argument("--resume")
    p.add_argument("--stop-after", type=int)
    p.add_argument("--report")
    a = p.parse_args()
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # what `accelerate launch --config_file <deepspeed yaml>` exports
    patch_accelerator(a.zero)

    from ggt_ir.train.options import load_options
    from ggt_ir.train.trainer import Trainer

    if a.stop_after:
        save = Trainer.save

        def save_then_stop(self):
            save(self)
            if self.state.iter == a.stop_after:
                raise SystemExit(0)

        Trainer.save = save_then_stop
    tr = Trainer(load_options(a.opt), resume=a.resume, command="dist_deepspeed_train")
    if a.report:
        cfg = tr.acc.state.deepspeed_plugin.deepspeed_config
        engine = tr.step.net_g
        frozen = [q for n, q in tr.acc.unwrap_model(engine).transformer.named_parameters() if not q.requires_grad]
        report = {"rank": tr.acc.process_index, "engine": type(engine).__name__,
                  "zero_stage": cfg["zero_optimization"]["stage"],
                  "batch": {k: cfg[k] for k in ("train_micro_batch_size_per_gpu", "train_batch_size",
                                                "gradient_accumulation_steps", "gradient_clipping")},
                  "frozen": len(frozen), "frozen_partitioned": sum(hasattr(q, "ds_id") for q in frozen),
                  "frozen_local_elements": sum(q.ds_tensor.numel() if hasattr(q, "ds_tensor") else q.numel()
                                               for q in frozen),
                  "frozen_elements": sum(q.ds_numel if hasattr(q, "ds_numel") else q.numel() for q in frozen)}
        Path(f"{a.report}.rank{tr.acc.process_index}.json").write_text(json.dumps(report))
    try:
        tr.fit()
    except SystemExit:
        pass
    return 0


if __name__ == "__main__":
    code = main()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
