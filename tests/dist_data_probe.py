"""Run under a 2-process launch: which training samples does each rank draw? (used by test_distributed)"""
import json
import os
import sys

import torch.distributed as dist
from accelerate import Accelerator

from ggt_ir.data.paired_folder import PairedFolderDataset

acc = Accelerator(cpu=True)
root, out = sys.argv[1], sys.argv[2]
ds = PairedFolderDataset(PairedFolderDataset.Options(dataroot=root, split="train", gt_size=16,
                                                     batch_size_per_gpu=2, num_worker_per_gpu=1))
loader = ds.train_loader(seed=0, rank=acc.process_index, world_size=acc.num_processes, start_iter=0)
keys = [k for _ in range(ds.batches_per_epoch) for k in next(loader)["key"]]
gathered = acc.gather_for_metrics([{"rank": acc.process_index, "keys": keys}], use_gather_object=True)
if acc.is_main_process:
    with open(out, "w") as f:
        json.dump(gathered, f)
acc.wait_for_everyone()
dist.destroy_process_group()
os._exit(0)
