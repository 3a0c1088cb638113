#!/usr/bin/env python3
"""The PyTorch side of `cargo bench -p seqtopk-train --bench compare`: one case per process.

Cases (the Rust bench passes the same shapes and hyper-parameters it runs itself):

    model    forward + next-token CE (+ router_aux_loss_coef x load balancing) + backward
    trainer  the same, then clip_grad_norm_ and a torch.optim.AdamW step (a whole trainer step)
    layer    one OlmoeSparseMoeBlock (no attention, no embedding): forward, mean, backward

`--experts-impl` picks transformers 5's experts implementation: `eager` (a Python loop over the
experts that have tokens) or `grouped_mm` (sorted tokens, one grouped GEMM per projection).
`--cap-s`: when the warm-up step alone takes longer, no further step is run and that one step is
reported (`capped: true`). Prints one JSON line: median and per-step milliseconds, peak resident
memory (VmHWM), minor/major page faults per timed step, versions and threads.
"""

import argparse
import json
import resource
import statistics
import time

import torch
import transformers


def peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def faults() -> tuple[int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_majflt


def build_model(args):
    with open(args.config) as f:
        cfg = json.load(f)
    config = transformers.AutoConfig.for_model(**cfg, experts_implementation=args.experts_impl)
    model = transformers.AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, experts_implementation=args.experts_impl
    )
    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), generator=gen)
    return model, config, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["model", "trainer", "layer"])
    ap.add_argument("--config", help="HF config.json (model, trainer)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048, help="layer case")
    ap.add_argument("--experts", type=int, default=64, help="layer case")
    ap.add_argument("--inter", type=int, default=1024, help="layer case")
    ap.add_argument("--top-k", type=int, default=8, help="layer case")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.95])
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--experts-impl", default="grouped_mm", choices=["eager", "grouped_mm"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--cap-s", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.case == "layer":
        from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

        config = transformers.OlmoeConfig(
            hidden_size=args.hidden,
            intermediate_size=args.inter,
            num_experts=args.experts,
            num_experts_per_tok=args.top_k,
            norm_topk_prob=False,
            experts_implementation=args.experts_impl,
        )
        model = OlmoeSparseMoeBlock(config)
        # The experts' stacked parameters are created with torch.empty: give them real values.
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        model.train()
        x = torch.randn(1, args.seq, args.hidden, requires_grad=True)
        tokens = args.seq

        def step():
            y = model(x)
            y.mean().backward()
            model.zero_grad(set_to_none=True)
            x.grad = None

    else:
        model, config, ids = build_model(args)
        tokens = args.batch * args.seq
        optim = None
        if args.case == "trainer":
            optim = torch.optim.AdamW(
                model.parameters(),
                lr=args.lr,
                betas=tuple(args.betas),
                eps=args.eps,
                weight_decay=args.weight_decay,
            )

        def step():
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            if optim is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optim.step()
            model.zero_grad(set_to_none=True)

    times = []
    capped = False
    f0 = faults()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            f0 = faults()
        start = time.perf_counter()
        step()
        ms = (time.perf_counter() - start) * 1e3
        if i >= args.warmup:
            times.append(ms)
        elif ms > args.cap_s * 1e3:
            # Too slow to repeat: report the one step that ran.
            times, capped = [ms], True
            break
    f1 = faults()
    n = len(times)
    print(
        json.dumps(
            {
                "median_ms": statistics.median(times),
                "times_ms": times,
                "tokens": tokens,
                "capped": capped,
                "peak_mib": peak_mib(),
                "minflt_per_step": (f1[0] - f0[0]) / n,
                "majflt_per_step": (f1[1] - f0[1]) / n,
                "params": sum(p.numel() for p in model.parameters()),
                "experts_impl": getattr(config, "_experts_implementation", None),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
