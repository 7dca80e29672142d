"""Closed-form class-conditional head perturbation at iNaturalist scale vs the per-class loop and a plain head.

B 512, D 2048, C 8142 (iNaturalist 2018), labels drawn from a long-tailed profile (n_c from 1000 down to 2),
so a batch holds a few hundred classes. Timed (forward + backward, gradients to W, b and z):

* ``plain``: ``CE(W z + b)``;
* ``closed_form``: ``0.5 CE(W z + b) + 0.5 CE(perturbed_head_logits(...))`` (the authors' mixed loss) and
  ``closed_form_pure`` (perturbed term only);
* ``loop_autograd``: the obvious form (the test reference): per class, ``autograd.grad`` of the class-mean CE
  on the batch graph w.r.t. (W, b), Eq. 8-9, logits of the class at ``W + eps_c``, their backward. Timed on
  ``--loop-classes`` classes and scaled to all classes present (plus the shared forward / backward);
* ``loop_explicit``: a stronger loop: ``G_c = r_c^T z_c / m_c`` formed directly (no batch-wide autograd),
  still one C x D perturbation per class. Same scaling.

    python bench/head_closed_form.py [--reps 3] [--loop-classes 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from ccsam_zoo.ccsam import perturbed_head_logits


def _timed(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _eps(gw: torch.Tensor, gb: torch.Tensor, wnorm: float, k: int, n: int, scale: float) -> list[torch.Tensor]:
    out = []
    for g in (gw, gb):  # per tensor (authors)
        gn = g.norm().clamp_min(1e-12)
        rho = scale * torch.sqrt(wnorm / (2 * gn)) * k**-0.25 * max(n - 1, 1) ** -0.25  # Eq. 8
        out.append(math.sqrt(k) * rho * g / gn)  # Eq. 9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=8142)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loop-classes", type=int, default=6)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, D, C = args.batch, args.dim, args.classes
    counts = torch.round(1000 * (2 / 1000) ** (torch.arange(C) / (C - 1))).long().clamp_min(2)
    y = torch.multinomial(counts.double(), B, replacement=True)
    classes = torch.unique(y)
    z0 = torch.relu(torch.randn(B, D))
    W = (0.01 * torch.randn(C, D)).requires_grad_(True)
    b = torch.zeros(C, requires_grad=True)
    z = z0.clone().requires_grad_(True)
    scale = 1.0

    def zero():
        for t in (W, b, z):
            t.grad = None

    def plain():
        zero()
        F.cross_entropy(F.linear(z, W, b), y).backward()

    def closed(f: float):
        def run():
            zero()
            logits = F.linear(z, W, b)
            pert = perturbed_head_logits(z, y, W, b, counts, scale=scale, logits=logits)
            ((1 - f) * F.cross_entropy(logits, y) + f * F.cross_entropy(pert, y)).backward()

        return run

    k = C * D + C
    wnorm = float(torch.sqrt(W.detach().square().sum() + b.detach().square().sum()))
    subset = classes[torch.randperm(len(classes))[: args.loop_classes]].tolist()

    def loop_autograd():
        zero()
        logits = F.linear(z, W, b)
        per_class = 0.0
        for c in subset:
            t0 = time.perf_counter()
            idx = (y == c).nonzero().squeeze(1)
            gw, gb = torch.autograd.grad(F.cross_entropy(logits[idx], y[idx]), [W, b], retain_graph=True)
            ew, eb = _eps(gw, gb, wnorm, k, int(counts[c]), scale)
            lo = F.linear(z[idx], W + ew, b + eb)
            (F.cross_entropy(lo, y[idx], reduction="sum") / B).backward()
            per_class += time.perf_counter() - t0
        t0 = time.perf_counter()
        F.cross_entropy(logits, y).backward()
        return per_class, time.perf_counter() - t0

    def loop_explicit():
        zero()
        logits = F.linear(z, W, b)
        r = torch.softmax(logits.detach(), 1) - F.one_hot(y, C).float()
        per_class = 0.0
        for c in subset:
            t0 = time.perf_counter()
            idx = (y == c).nonzero().squeeze(1)
            gw = r[idx].T @ z0[idx] / len(idx)
            gb = r[idx].mean(0)
            ew, eb = _eps(gw, gb, wnorm, k, int(counts[c]), scale)
            lo = F.linear(z[idx], W + ew, b + eb)
            (F.cross_entropy(lo, y[idx], reduction="sum") / B).backward()
            per_class += time.perf_counter() - t0
        return per_class, 0.0

    res = {"batch": B, "dim": D, "classes": C, "classes_present": len(classes), "threads": args.threads,
           "reps": args.reps, "loop_classes_timed": len(subset)}
    t_plain = _timed(plain, args.reps)
    t_closed = _timed(closed(0.5), args.reps)
    t_pure = _timed(closed(1.0), args.reps)
    t0 = time.perf_counter()
    fwd = F.linear(z, W, b)
    t_fwd = time.perf_counter() - t0
    del fwd
    loops = {}
    for name, fn in (("loop_autograd", loop_autograd), ("loop_explicit", loop_explicit)):
        per, shared = fn()
        loops[name] = t_fwd + shared + per / len(subset) * len(classes)
        res[f"{name}_per_class_s"] = round(per / len(subset), 4)
    res |= {"plain_s": round(t_plain, 4), "closed_form_s": round(t_closed, 4),
            "closed_form_pure_s": round(t_pure, 4)}
    res |= {f"{k}_s_scaled": round(v, 2) for k, v in loops.items()}
    res["closed_form_over_plain"] = round(t_closed / t_plain, 3)
    res["closed_form_pure_over_plain"] = round(t_pure / t_plain, 3)
    res["speedup_vs_loop_autograd"] = round(loops["loop_autograd"] / t_closed, 1)
    res["speedup_vs_loop_explicit"] = round(loops["loop_explicit"] / t_closed, 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
