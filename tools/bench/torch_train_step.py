#!/usr/bin/env python3
"""Time one training step (forward + backward) of a randomly initialised HF model on the CPU.

Called by `cargo bench -p seqtopk-model --bench train_step` with the config it benchmarks, so
both sides run the same architecture on the same shapes:

    python tools/bench/torch_train_step.py --config config.json --batch 4 --seq 512 --steps 3

The step is `model(input_ids, labels=input_ids)` (next-token cross-entropy plus, with
`output_router_logits`, `router_aux_loss_coef` x the load-balancing loss) and `loss.backward()`;
no optimiser. Prints one JSON line: median and per-step milliseconds, parameter count, versions.
"""

import argparse
import json
import os
import statistics
import time

import torch
import transformers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="HF config.json to instantiate")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.config) as f:
        cfg = json.load(f)
    config = transformers.AutoConfig.for_model(**cfg)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, vocab, (args.batch, args.seq), generator=gen)

    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)

    print(
        json.dumps(
            {
                "median_ms": statistics.median(times),
                "times_ms": times,
                "params": sum(p.numel() for p in model.parameters()),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "attn_implementation": getattr(config, "_attn_implementation", None),
            }
        )
    )


if __name__ == "__main__":
    main()
