"""Two gloo processes on CPU == one process on the same global batch (accelerate.debug_launcher)."""

from __future__ import annotations

import pytest
import timm
import torch

import ccsam_zoo  # noqa: F401
from ccsam_zoo.ccsam import build_stage1, build_stage2
from ccsam_zoo.models import FeaturesAndLogits

COUNTS = [400, 120, 40, 9, 1]
CASES = [
    # (stage, cfg, sizes of the two local batches)
    (1, {"name": "ce"}, (8, 8)),
    (1, {"name": "sam", "rho": 0.1}, (8, 8)),
    (1, {"name": "ccsam", "mixup_alpha": 0.0, "scale": 0.05, "max_ratio": None}, (9, 7)),
    (1, {"name": "ccsam", "preset": "paper", "flat_ratio": 0.5, "max_ratio": None}, (10, 6)),
    (1, {"name": "ccsam", "preset": "paper", "mode": "block", "blocks": 1, "flat_ratio": 0.5, "max_ratio": None},
     (9, 7)),
    (2, {"name": "ccsam_adv", "adv_lambda": 0.5}, (8, 8)),
]


def _net():
    torch.manual_seed(0)
    m = timm.create_model("resnet20_cifar", num_classes=len(COUNTS), widths=(4, 6, 8))
    # BatchNorm in eval mode: per-process batch statistics would otherwise differ from the global batch
    return FeaturesAndLogits(m).double().eval()


def _worker():
    from accelerate import Accelerator

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 0, 2, 1, 0, 3, 0, 1, 4, 0, 2, 0, 1, 3])
    for stage, cfg, sizes in CASES:
        build = build_stage1 if stage == 1 else build_stage2
        ref_net, net = _net(), _net()
        if stage == 2:
            for n in (ref_net, net):
                for p in n.model.parameters():
                    p.requires_grad_(False)
                for p in n.head.parameters():
                    p.requires_grad_(True)
        method = build(cfg, COUNTS)
        method.set_epoch(2, 5)
        method.forward_backward(ref_net, x, y, None)
        ddp = acc.prepare(net)
        start = 0 if rank == 0 else sizes[0]
        local = slice(start, start + sizes[rank])
        method.forward_backward(ddp, x[local], y[local], acc)
        for (n, p), (_, q) in zip(net.named_parameters(), ref_net.named_parameters()):
            if q.grad is None:
                continue
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=f"{cfg} {n}")
            torch.testing.assert_close(p, q, rtol=0, atol=0)
    acc.wait_for_everyone()


@pytest.mark.slow
def test_two_processes_equal_one_process():
    from accelerate import debug_launcher

    debug_launcher(_worker, num_processes=2)
