"""wrap + traversal of a 10,000-tensor torch model against ``named_parameters``; zero-copy reads."""

from __future__ import annotations

import sys

import bench_checkpoint
import numpy as np
import torch
from run import SEED, traversal
from torch import nn

import unitree as ut


def main(runs: int) -> None:
    torch.manual_seed(SEED)
    layers = 5000  # a weight and a bias each: 10,000 tensors
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(layers)])
    n = len(list(model.parameters()))
    native = lambda: list(model.named_parameters())  # noqa: E731
    traversal(f"torch, {n:,} tensors: ", "named_parameters", native, lambda: ut.wrap(model), runs)

    p = ut.wrap(nn.Linear(256, 256))["weight"]
    shared = np.shares_memory(p.numpy(), p.native.detach().numpy())
    print(f"{'p.numpy() shares memory with the torch tensor':<44} {shared}")
    bench_checkpoint.checkpoint(runs)
    print(f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
