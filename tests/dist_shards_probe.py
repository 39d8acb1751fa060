"""Run under a 2-process launch: which samples does each rank read from GGTShards? (used by test_stream_dist)

argv: <shard url pattern> <out.json>. Each rank (1 worker) reports the keys of one exact evaluation pass and of
the first pass of the resampled training stream (batch 1, no shuffle buffer: 6 shards x 2 samples / 2 ranks).
"""
import json
import os
import sys

import torch.distributed as dist
from accelerate import Accelerator

from ggt_ir.data.stream import GGTShardsDataset

acc = Accelerator(cpu=True)
urls, out = sys.argv[1], sys.argv[2]
ds = GGTShardsDataset(GGTShardsDataset.Options(urls=urls, gt_size=16, batch_size_per_gpu=1, num_worker_per_gpu=1,
                                               shuffle_buffer=0))
rank, world = acc.process_index, acc.num_processes
eval_keys = [k for b in ds.eval_loader(rank=rank, world_size=world, batch_size=2) for k in b["key"]]
stream = ds.train_loader(seed=0, rank=rank, world_size=world, start_iter=0)
train_keys = [next(stream)["key"][0] for _ in range(6)]
gathered = acc.gather_for_metrics([{"rank": rank, "eval": eval_keys, "train": train_keys}], use_gather_object=True)
if acc.is_main_process:
    with open(out, "w") as f:
        json.dump(gathered, f)
acc.wait_for_everyone()
dist.destroy_process_group()
os._exit(0)
