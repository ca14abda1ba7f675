"""Host (CPU) cost of launching the fused kernels, with and without the cached fast launch.

Small models are launch-bound: the GPU waits for Python. This times, at a gpt-small-like
shape (T = 8192, C = 1024, n = 4, bf16):

* one kernel launch (post-res forward), host microseconds per launch, no synchronisation;
* one whole connection forward + backward through autograd (identity branch): the host time
  to issue it and the synchronised wall time;
* a gpt-small training step (wall and issue time),

each with ``TORCH_MHC_FAST_LAUNCH`` on and off (``_backend.FAST_LAUNCH``). Writes JSON.

    PYTHONPATH=src python benchmarks/host_overhead.py --out host.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from torch_mhc.ops import _backend
from torch_mhc.ops.connection import connection_post, connection_pre
from torch_mhc.ops.post_res import post_res_forward_triton


def _host_us(fn, reps):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / reps * 1e6, (t2 - t0) / reps * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--C", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--optimizer", choices=("fused", "foreach"), default="fused")
    ap.add_argument("--out", default="host_overhead.json")
    args = ap.parse_args()
    dev = "cuda"
    T, C, n = args.tokens, args.C, 4
    N, K = (n + 2) * n, n * C
    x = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(T, C, device=dev, dtype=torch.bfloat16)
    hq = torch.rand(T, n, device=dev)
    hr = torch.rand(T, n, n, device=dev)
    fn = (torch.randn(N, K, device=dev) * 0.02).requires_grad_()
    base = torch.randn(N, device=dev, requires_grad=True)
    scale = (torch.rand(3, device=dev) + 0.5).requires_grad_()
    w = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16)

    def conn():
        h, _, h_post, h_res, link = connection_pre(x, fn, base, scale)
        out = connection_post(x, h * 1.5, h_post, h_res, link)
        out.backward(w)

    res = {}
    grads = []
    for fast in (False, True):  # the fast launch must give the same bits
        _backend.FAST_LAUNCH = fast
        for t in (x, fn, base, scale):
            t.grad = None
        conn()
        conn()  # the second call takes the cached path
        grads.append([t.grad.clone() for t in (x, fn, base, scale)])
    res["fast_equals_triton_run"] = all(torch.equal(a, b) for a, b in zip(*grads))
    print(f"fast launch gives identical gradients: {res['fast_equals_triton_run']}", flush=True)
    for fast in (False, True):
        _backend.FAST_LAUNCH = fast
        r = res["fast" if fast else "triton_run"] = {}
        r["launch_host_us"], r["launch_wall_us"] = _host_us(
            lambda: post_res_forward_triton(x.detach(), y, hq, hr), 200)
        r["connection_host_us"], r["connection_wall_us"] = _host_us(conn, 30)
        print(f"fast={fast}: one launch {r['launch_host_us']:.1f} us host; connection fwd+bwd "
              f"{r['connection_host_us']:.0f} us host, {r['connection_wall_us']:.0f} us wall",
              flush=True)
    from torch_mhc.bench import _build_gpt, make_optimizer
    ns = SimpleNamespace(seq=None, n=4, dtype="bf16")
    for variant in ("residual", "mhc-triton"):
        for fast in ((False, True) if variant == "mhc-triton" else (True,)):
            _backend.FAST_LAUNCH = fast
            model, cfg = _build_gpt("gpt-small", variant, ns, torch.device(dev))
            opt = make_optimizer(model, args.optimizer, torch.device(dev))
            idx = torch.randint(0, cfg.vocab_size, (8, cfg.seq_len), device=dev)

            def step():
                opt.zero_grad(set_to_none=True)
                _, loss = model(idx, idx)
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            issue, wall = [], []
            for _ in range(args.steps):
                h, wl = _host_us(step, 1)
                issue.append(h / 1e3)
                wall.append(wl / 1e3)
            key = f"gpt-small {variant}" + (f" fast={fast}" if variant != "residual" else "")
            res[key] = {"issue_ms": statistics.median(issue), "wall_ms": statistics.median(wall)}
            print(f"{key}: wall {res[key]['wall_ms']:.1f} ms, issue {res[key]['issue_ms']:.1f} ms",
                  flush=True)
            del model, opt
            torch.cuda.empty_cache()
    res["config"] = {"T": T, "C": C, "n": n, "dtype": "bf16"}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
