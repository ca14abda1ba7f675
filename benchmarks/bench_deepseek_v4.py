"""DeepSeek-V4 training step: transformers' own mHC vs the same model patched onto torch-mhc.

Writes one JSON file. Two suites, each variant in the same process and run:

* ``model``: a slice of a V4-Flash-shaped model (default: hidden 4096, 64 heads of dim 512,
  q_lora 1024, grouped output 8 x 1024, hc_mult 4, 4 layers covering the three attention
  types, 16 routed experts of width 2048 with 6 active plus 1 shared, sequence 4096, micro
  batch 1, bf16 weights with the mHC parameters and norms kept in fp32 as V4 checkpoints
  ship them). One training step = forward with labels + backward + AdamW step; median of
  ``--steps`` after ``--warmup``. Variants: ``transformers`` (unpatched), ``torch_mhc``
  (``patch_deepseek_v4``, backend auto = fused Triton on CUDA) and, with ``--reference``,
  ``torch_mhc_reference`` (backend torch).
* ``site``: one mHC site alone (branch = identity, ``T = batch * seq`` tokens, width C,
  forward + backward): transformers' ``DeepseekV4HyperConnection`` plus the decoder layer's
  merge, vs :class:`torch_mhc.HyperConnection` from the same tensors.

Each variant also records the first step's loss (the patched model must give the same loss)
and the peak memory. Nothing here downloads weights: the model is random, built from a config.

    python benchmarks/bench_deepseek_v4.py --out benchmarks/results/deepseek_v4.json
    python benchmarks/bench_deepseek_v4.py --tiny --device cpu   # smoke test, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch

V4_FP32_MODULES = ("attn_hc", "ffn_hc", "hc_head", "sinks", "position_bias",
                   "e_score_correction_bias", "q_a_norm", "kv_norm", "input_layernorm",
                   "post_attention_layernorm", "norm")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/deepseek_v4.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=512)
    ap.add_argument("--q-lora", type=int, default=1024)
    ap.add_argument("--o-groups", type=int, default=8)
    ap.add_argument("--o-lora", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--active", type=int, default=6)
    ap.add_argument("--moe-width", type=int, default=2048)
    ap.add_argument("--hc-mult", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--site-steps", type=int, default=50)
    ap.add_argument("--suites", default="model,site")
    ap.add_argument("--reference", action="store_true",
                    help="also time the patched model on the PyTorch reference ops")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    args = ap.parse_args(argv)
    if args.tiny:
        args.hidden, args.layers, args.heads, args.head_dim = 64, 3, 4, 32
        args.q_lora, args.o_groups, args.o_lora, args.experts, args.active = 32, 2, 16, 4, 2
        args.moe_width, args.seq, args.vocab, args.steps, args.warmup = 32, 32, 128, 2, 1
        args.site_steps = 3
    return args


def v4_config(a):
    from transformers import DeepseekV4Config
    kinds = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    return DeepseekV4Config(
        vocab_size=a.vocab, hidden_size=a.hidden, moe_intermediate_size=a.moe_width,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=1,
        head_dim=a.head_dim, q_lora_rank=a.q_lora, num_experts_per_tok=a.active,
        n_routed_experts=a.experts, n_shared_experts=1, hc_mult=a.hc_mult, o_groups=a.o_groups,
        o_lora_rank=a.o_lora, max_position_embeddings=max(a.seq, 256),
        index_topk=min(512, max(4, a.seq // 8)),
        sliding_window=min(128, a.seq), layer_types=[kinds[i % 3] for i in range(a.layers)],
        mlp_layer_types=["hash_moe"] + ["moe"] * (a.layers - 1),
        compress_rates=({"compressed_sparse_attention": 4, "heavily_compressed_attention": 8}
                        if a.tiny else None))


def build(a, dtype, device):
    from transformers import DeepseekV4ForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = DeepseekV4ForCausalLM(v4_config(a))
    model.to(dtype)
    for name, mod in model.named_modules():  # as from_pretrained keeps them (fp32 strict list)
        if name.split(".")[-1] in V4_FP32_MODULES:
            mod.float()
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                b.copy_(torch.randint(0, a.experts, b.shape, device=b.device))
    return model.train()


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timer(device):
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        return (lambda: start.record()), (lambda: (end.record(), end.synchronize(),
                                                   start.elapsed_time(end))[-1])
    box = {}
    return (lambda: box.__setitem__("t", time.perf_counter())), \
        (lambda: (time.perf_counter() - box["t"]) * 1e3)


def _reset_peak(device):
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def bench_model(a, variant, dtype, device):
    from torch_mhc.integrations.transformers import patch_deepseek_v4
    _reset_peak(device)
    model = build(a, dtype, device)
    if variant != "transformers":
        patch_deepseek_v4(model, backend="torch" if variant == "torch_mhc_reference" else "auto")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(device)
    start, stop = _timer(device)
    # The fp32-kept modules (norms, mHC parameters) hand fp32 activations to bf16 linears
    # in some transformers releases (5.17 on the H100: "mat1 and mat2 ... float !=
    # BFloat16"); autocast makes every matmul take its inputs in bf16, for both variants.
    autocast = (torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
                if dtype == torch.bfloat16 else contextlib.nullcontext())
    times, first_loss = [], None
    for i in range(a.warmup + a.steps):
        start()
        with autocast:
            loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ms = stop()
        if first_loss is None:
            first_loss = float(loss.detach())
        if i >= a.warmup:
            times.append(ms)
    out = {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times,
           "peak_gib": _peak_gib(device), "first_loss": first_loss}
    del model, opt
    _reset_peak(device)
    return out


def bench_site(a, variant, dtype, device):
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

    from torch_mhc import HyperConnection
    cfg = v4_config(a)
    torch.manual_seed(0)
    site = DeepseekV4HyperConnection(cfg).to(device)
    with torch.no_grad():
        site.fn.normal_(0, cfg.initializer_range)
        site.base.zero_()
        site.scale.fill_(1.0)
    n, C = a.hc_mult, a.hidden
    x = torch.randn(a.batch, a.seq, n, C, device=device, dtype=dtype, requires_grad=True)
    if variant == "transformers":
        def run():
            post, comb, collapsed = site(x)
            return post.to(dtype).unsqueeze(-1) * collapsed.unsqueeze(-2) + torch.matmul(
                comb.to(dtype).transpose(-1, -2), x)
    else:
        hc = HyperConnection(torch.nn.Identity(), C, n, "mhc", backend="auto",
                             sinkhorn_iters=cfg.hc_sinkhorn_iters, rms_eps=cfg.rms_norm_eps,
                             hc_eps=cfg.hc_eps).to(device)
        hc.fn, hc.base, hc.scale = site.fn, site.base, site.scale

        def run():
            return hc(x)
    grad = torch.randn(a.batch, a.seq, n, C, device=device, dtype=dtype)
    _reset_peak(device)
    start, stop = _timer(device)
    times = []
    for i in range(3 + a.site_steps):
        start()
        out = run()
        out.backward(grad)
        ms = stop()
        x.grad = None
        site.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(ms)
    return {"median_us": statistics.median(times) * 1e3, "min_us": min(times) * 1e3,
            "peak_gib": _peak_gib(device)}


def main(argv=None):
    a = parse(argv)
    import transformers

    from torch_mhc.integrations.transformers import require_transformers
    from torch_mhc.integrations.transformers._compat import MIN_TRANSFORMERS_DEEPSEEK_V4
    require_transformers("bench_deepseek_v4", MIN_TRANSFORMERS_DEEPSEEK_V4)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from torch_mhc.bench import _commit
    result = {
        "benchmark": "deepseek_v4_train_step", "args": vars(a),
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "triton": triton_version, "python": sys.version.split()[0],
        "commit": _commit(), "model": {}, "site": {},
    }
    variants = ["transformers", "torch_mhc"] + (["torch_mhc_reference"] if a.reference else [])
    suites = a.suites.split(",")
    if "model" in suites:
        for v in variants:
            result["model"][v] = bench_model(a, v, dtype, a.device)
            print(f"model {v}: {result['model'][v]['median_ms']:.1f} ms, "
                  f"peak {result['model'][v]['peak_gib']} GiB, loss {result['model'][v]['first_loss']:.5f}",
                  flush=True)
        base = result["model"]["transformers"]
        for v in variants[1:]:
            r = result["model"][v]
            r["speedup_vs_transformers"] = base["median_ms"] / r["median_ms"]
            r["loss_rel_diff"] = abs(r["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
            if base["peak_gib"]:
                r["peak_vs_transformers"] = r["peak_gib"] / base["peak_gib"]
    if "site" in suites:
        for v in ("transformers", "torch_mhc"):
            result["site"][v] = bench_site(a, v, dtype, a.device)
            print(f"site {v}: {result['site'][v]['median_us']:.0f} us", flush=True)
        result["site"]["torch_mhc"]["speedup_vs_transformers"] = (
            result["site"]["transformers"]["median_us"] / result["site"]["torch_mhc"]["median_us"])
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
