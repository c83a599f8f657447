"""Run by torchrun in test_distributed.py: each rank updates a CRD memory bank with its own shard of a batch."""

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from kdkit.losses.contrastive import MemoryBank

dist.init_process_group("gloo")
rank = dist.get_rank()
bank = MemoryBank(16, feat_dim=4, generator=torch.Generator().manual_seed(0))  # same initial rows on every rank
# Rank 0 holds samples 0..2 of the batch, rank 1 samples 8..12 (shards of different sizes).
index = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([8, 9, 10, 11, 12])
g = torch.Generator().manual_seed(100 + rank)
bank.update(index, torch.randn(len(index), 4, generator=g), torch.randn(len(index), 4, generator=g))
save_file({"memory_s": bank.memory_s, "memory_t": bank.memory_t},
          os.path.join(sys.argv[1], f"bank{rank}.safetensors"))
dist.destroy_process_group()
