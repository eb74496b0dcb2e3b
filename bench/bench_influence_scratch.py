"""Scratch timings for the influence engine (may be deleted): ~0.3M-param conv UNet, N=48, 32², F=4.

Run: .venv/bin/python bench/bench_influence_scratch.py [--threads 2] [--alternatives]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.func import jvp, vmap


def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="circular")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = conv(cin, cout, stride)
        self.norm = nn.GroupNorm(4, cout)

    def forward(self, x):
        return nn.functional.silu(self.norm(self.conv(x)))


class SmallUNet(nn.Module):
    """Two-level conv UNet with skips, GroupNorm + SiLU, circular padding, residual output."""

    def __init__(self, f: int = 4, w: int = 32) -> None:
        super().__init__()
        self.inp = Block(f, w)
        self.e1 = Block(w, w)
        self.down1 = Block(w, 2 * w, stride=2)
        self.e2 = Block(2 * w, 2 * w)
        self.down2 = Block(2 * w, 2 * w, stride=2)
        self.mid = Block(2 * w, 2 * w)
        self.up2 = Block(4 * w, 2 * w)
        self.up1 = Block(3 * w, w)
        self.out = nn.Conv2d(w, f, 1)

    def forward(self, x):
        a = self.e1(self.inp(x))  # (N, w, H, W)
        b = self.e2(self.down1(a))  # (N, 2w, H/2, W/2)
        c = self.mid(self.down2(b))  # (N, 2w, H/4, W/4)
        c = nn.functional.interpolate(c, scale_factor=2)
        b = self.up2(torch.cat([b, c], 1))
        b = nn.functional.interpolate(b, scale_factor=2)
        a = self.up1(torch.cat([a, b], 1))
        return x + self.out(a)


CLOCK = time.perf_counter  # --cpu-time: time.process_time (robust on a shared box, 1 thread)


def timed(fn, repeat: int = 1):
    """Best of ``repeat`` runs (the box is shared: the minimum is the least disturbed)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = CLOCK()
        out = fn()
        best = min(best, CLOCK() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=36)
    ap.add_argument("--alternatives", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = SmallUNet(4, args.width).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.n, 4, args.size, args.size, device=dev)
    x[:, 0] = x[:, 0].abs() + 1.0
    x[:, 3] = x[:, 3].abs() + 2.0
    y = x + 0.05 * torch.randn_like(x)
    print(f"params {n_params}, N {args.n}, {args.size}², threads {args.threads}, device {dev}")
    print(f"load average at start: {os.getloadavg()}; clock {'CPU' if args.cpu_time else 'wall'}")

    from coherence.analysis.autodiff import BatchJacobian, FlatModel, per_example_vjps
    from coherence.analysis.influence import compute_influence, top_eigenvalue

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model.eval()
    fm = FlatModel(model)
    with torch.no_grad():
        t_fwd, out = timed(lambda: fm(fm.theta, x), 5)
    print(f"one batch forward: {t_fwd:.3f} s")
    r = (out - y).detach()
    t_vjp, _ = timed(lambda: (per_example_vjps(fm, x, [r]), sync()), 3)
    print(f"per-example VJPs (vmap, all N): {t_vjp:.3f} s")
    t_vjp16, _ = timed(lambda: (per_example_vjps(fm, x, [r], chunk_size=16), sync()), 3)
    print(f"per-example VJPs (vmap, chunks of 16): {t_vjp16:.3f} s")
    t_vjp3, _ = timed(lambda: (per_example_vjps(fm, x, [r, r, r]), sync()), 3)
    print(f"per-example VJPs, 3 cotangents (vmap): {t_vjp3:.3f} s")

    jac = BatchJacobian(fm, x)
    v = torch.randn(fm.n_params, device=dev)
    t_lin, _ = timed(lambda: (jac.jvp(v), sync()))
    print(f"linearize (first tangent, includes trace): {t_lin:.3f} s")
    t_push, _ = timed(lambda: (jac.jvp(v), sync()), 5)
    print(f"linearized JVP per tangent: {t_push:.3f} s  (= {t_push / t_fwd:.1f} forwards)")
    t_pull0, _ = timed(lambda: (jac.vjp(r), sync()))
    t_pull, _ = timed(lambda: (jac.vjp(r), sync()), 5)
    print(f"batch VJP first {t_pull0:.3f} s, then per cotangent {t_pull:.3f} s")

    if args.alternatives:

        def loop_grads():
            rows = []
            for i in range(args.n):
                model.zero_grad(set_to_none=True)
                o = model(x[i : i + 1])
                g = torch.autograd.grad((o * r[i : i + 1]).sum(), list(model.parameters()))
                rows.append(torch.cat([t.reshape(-1) for t in g]))
            return torch.stack(rows)

        t_loop, _ = timed(loop_grads, 2)
        print(f"per-example grads, python loop of autograd.grad: {t_loop:.3f} s")
        f = lambda th: fm(th, x)  # noqa: E731
        t_jvp, _ = timed(lambda: jvp(f, (fm.theta,), (v,)), 3)
        print(f"torch.func.jvp un-vmapped, per tangent: {t_jvp:.3f} s")
        vs = torch.randn(4, fm.n_params, device=dev)
        t_vjvp, _ = timed(lambda: vmap(lambda t: jvp(f, (fm.theta,), (t,))[1])(vs), 2)
        print(f"vmap over jvp, per tangent (4 tangents): {t_vjvp / 4:.3f} s")
        us = torch.randn(4, *x.shape, device=dev)
        t_vpull, _ = timed(lambda: vmap(jac._pull)(us), 2)
        print(f"vmap over batch VJP, per cotangent (4): {t_vpull / 4:.3f} s")

    for est, kw in [
        ("euclidean", {}),
        ("subspace", {}),
        ("cg", {"rtol": 1.5e-2, "max_iter": 1}),
    ]:
        t_total, res = timed(
            lambda est=est, kw=kw: compute_influence(model, x, y, estimator=est, **kw)
        )
        d = res.diagnostics
        extra = ""
        if d.rank is not None:
            extra = f" rank {d.rank}"
        if d.iterations is not None:
            its = d.iterations
            extra = f" iterations max {max(its)} mean {sum(its) / len(its):.1f}"
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in d.stage_seconds.items())
        print(f"{est}: total {t_total:.2f} s (wall stages: {stages}){extra}, jvp {d.jvp_method}")
        if est == "subspace":
            s = d.rank
        if est == "cg":
            per_iter = args.n * (t_push + t_pull)
            print(
                f"  cg (1 iteration + true-residual matvec, incl. linearize): solve "
                f"{d.stage_seconds['solve']:.1f} s; per iteration over {args.n} columns "
                f"≈ N × (JVP + VJP) = {per_iter:.1f} s"
            )
    t_three, _ = timed(lambda: compute_influence(model, x, y, response=("smse", "mass", "energy")))
    print(f"subspace, 3 responses: total {t_three:.2f} s")
    t_top, _ = timed(lambda: top_eigenvalue(model, x, 1e-4, iters=20, tol=1e-4))
    print(f"top_eigenvalue (Lanczos, ≤ 20 steps, tol 1e-4): {t_top:.2f} s")
    floor = 3 * t_fwd + s * 2 * t_fwd
    print(
        f"floor = N VJPs (one batch forward + backward ≈ 3 forwards, {3 * t_fwd:.2f} s) "
        f"+ s={s} × 2 forwards ({s * 2 * t_fwd:.2f} s) = {floor:.2f} s"
    )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
