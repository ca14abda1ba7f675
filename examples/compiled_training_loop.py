"""A training loop of your own around a compiled mHC GPT (what ``mhc train --compile`` does).

    python examples/compiled_training_loop.py                      # whole model, default mode
    python examples/compiled_training_loop.py --scope block        # blocks one by one
    python examples/compiled_training_loop.py --mode reduce-overhead --accum 2   # CUDA graphs

Under CUDA graphs (``reduce-overhead``) a replay overwrites the outputs of the one before:
mark each forward as a new step, use a loss before the next forward, and give every
parameter a ``.grad`` before the first micro-batch, so that autograd adds each micro-batch's
gradient into it rather than keeping the graph's own buffer (docs/compile.md).
"""
import argparse

import torch

from torch_mhc.models import GPT, compile_blocks, gpt_config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="default",
                    choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"))
    ap.add_argument("--scope", default="model", choices=("model", "block", "none"),
                    help="compile the whole model, each block, or nothing")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", connection="mhc", vocab_size=256, seq_len=64)).to(dev)
    step_model = model
    if args.scope == "model":
        step_model = torch.compile(model, mode=args.mode, fullgraph=True)
    elif args.scope == "block":
        compile_blocks(model, args.mode)  # in place: identical blocks share one graph
    graphs = args.scope != "none" and args.mode == "reduce-overhead"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if graphs:  # accumulate into .grad in place (never hand autograd a graph's buffer)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    data = torch.randint(0, 256, (args.steps, args.accum, 4, 65), device=dev)
    for step in range(args.steps):
        total = 0.0
        for micro in range(args.accum):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            batch = data[step, micro]
            _, loss = step_model(batch[:, :-1], batch[:, 1:])
            (loss / args.accum).backward()
            total += loss.item() / args.accum  # read before the next replay
        opt.step()
        opt.zero_grad(set_to_none=not graphs)
        print(f"step {step + 1}: loss {total:.4f}")


if __name__ == "__main__":
    main()
