"""Run under a 2-process CPU launch (tests/helpers.py:launch_two_processes): the real trainer with accelerate's
FSDP2 code path, on gloo.

``accelerate launch`` does not start FSDP on CPU (its FSDP switch is for accelerators only: state.py leaves a
MULTI_CPU launch as MULTI_CPU), so this driver builds each Accelerator as the launcher does (MULTI_CPU, gloo,
two ranks) and then turns it into an FSDP2 one with the plugin the shipped config describes
(options/accelerate/fsdp_bf16_8gpu.yaml, read here), before the trainer prepares anything. Everything after
that -- ``accelerator.prepare`` (accelerate's ``fsdp2_prepare_model``: auto-wrap, ``fully_shard``, RAM-efficient
loading), training, clipping, validation, ``save_state`` / ``load_state`` (DCP), the export gather -- is the
code a GPU run executes.

    python tests/dist_fsdp_train.py -opt X.yml [--resume latest] [--report out.json] [--no-ram-efficient]

``--stop-after N``: end right after the checkpoint of iteration N (a killed run, to resume).
``--report``: each rank writes what it holds after ``prepare`` (sharded vs plain parameters, its share of the
elements, whether the trained module was built on ``meta``) to ``<report>.rank<i>.json``.
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


def fsdp_plugin(ram_efficient: bool):
    from accelerate.utils import FullyShardedDataParallelPlugin

    cfg = yaml.safe_load((ROOT / "options/accelerate/fsdp_bf16_8gpu.yaml").read_text())["fsdp_config"]
    return FullyShardedDataParallelPlugin(
        fsdp_version=cfg["fsdp_version"], auto_wrap_policy=cfg["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=cfg.get("fsdp_transformer_layer_cls_to_wrap"),
        cpu_ram_efficient_loading=ram_efficient and cfg["fsdp_cpu_ram_efficient_loading"],
        reshard_after_forward=cfg["fsdp_reshard_after_forward"], state_dict_type=cfg["fsdp_state_dict_type"],
        activation_checkpointing=cfg["fsdp_activation_checkpointing"])


def patch_accelerator(ram_efficient: bool) -> None:
    import accelerate
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    base = accelerate.Accelerator

    class FSDPOnCPU(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            assert self.distributed_type == DistributedType.MULTI_CPU and self.num_processes == 2
            self.state.fsdp_plugin = fsdp_plugin(ram_efficient)
            # AcceleratorState() copies PartialState's fields each time it is built: set both
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.state.distributed_type = DistributedType.FSDP

    accelerate.Accelerator = FSDPOnCPU


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-opt", required=True)
    p.add_argument("--resume")
    p.add_argument("--report")
    p.add_argument("--no-ram-efficient", action="store_true")
    p.add_argument("--stop-after", type=int, help="stop (as if killed) right after the checkpoint of this iteration")
    a = p.parse_args()
    os.environ["ACCELERATE_USE_FSDP"] = "true"  # what `accelerate launch --config_file <fsdp yaml>` exports
    patch_accelerator(not a.no_ram_efficient)

    from ggt_ir.generative import pretrained, sharding
    from ggt_ir.train.options import load_options
    from ggt_ir.train.trainer import Trainer

    on_meta = []
    original = pretrained.load_component_on_meta

    def spy(*args, **kwargs):
        on_meta.append(args[2])
        return original(*args, **kwargs)

    pretrained.load_component_on_meta = spy
    if a.stop_after:
        save = Trainer.save

        def save_then_stop(self):
            save(self)
            if self.state.iter == a.stop_after:
                raise SystemExit(0)

        Trainer.save = save_then_stop
    tr = Trainer(load_options(a.opt), resume=a.resume, command="dist_fsdp_train")
    if a.report:
        net = tr.acc.unwrap_model(tr.step.net_g)
        trained = getattr(net, "transformer", None) or net.unet
        frozen = [(n, q) for n, q in trained.named_parameters() if not q.requires_grad]
        from torch.distributed.tensor import DTensor

        report = {"rank": tr.acc.process_index, "distributed_type": str(tr.acc.distributed_type),
                  "built_on_meta": on_meta, **sharding.sharded_summary(trained),
                  "frozen": len(frozen), "frozen_sharded": sum(isinstance(q, DTensor) for _, q in frozen),
                  "frozen_on_meta": sum(q.is_meta for _, q in frozen),
                  "helpers_on_meta": sum(q.is_meta for m in getattr(net, "_frozen_modules", lambda: [])()
                                         for q in m.parameters())}
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
