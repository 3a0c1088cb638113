#!/usr/bin/env python3
"""Check that an exported directory loads in transformers and computes what the original does.

    tools/fixtures/.venv/bin/python tools/convert/check_export.py ORIGINAL EXPORTED [EXPORTED ...]

Each directory is loaded with `AutoModelForCausalLM.from_pretrained` unchanged (float32, eager
attention, CPU); both run on the same token rows (seeded random ids, plus the tokenizer's encoding
of a few prompts when ORIGINAL has a tokenizer.json) and the largest |Δ logit| is printed as JSON.
Exits non-zero when a directory fails to load or a difference exceeds --tol. Also reports whether
every tensor of the two state dicts is bit-identical when their key sets match.

Needs the pinned torch/transformers venv of tools/fixtures (tools/fixtures/setup-venv.sh).
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "Once upon a time"]


def load(path):
    start = time.time()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    return model, time.time() - start


def rows(path, vocab):
    g = torch.Generator().manual_seed(0)
    out = [torch.randint(0, vocab, (1, 24), generator=g) for _ in range(3)]
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(path)
        out += [torch.tensor([tok.encode(p, add_special_tokens=False)]) for p in PROMPTS]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("original")
    ap.add_argument("exported", nargs="+")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.manual_seed(0)
    ref, ref_s = load(args.original)
    inputs = rows(args.original, ref.config.vocab_size)
    with torch.no_grad():
        ref_logits = [ref(ids).logits for ids in inputs]
    ref_state = ref.state_dict()
    failed = False
    for path in args.exported:
        try:
            model, secs = load(path)
        except Exception as e:  # noqa: BLE001 - report any loading failure
            print(json.dumps({"exported": path, "error": f"{type(e).__name__}: {e}"}))
            failed = True
            continue
        with torch.no_grad():
            diff = max(float((model(ids).logits - r).abs().max())
                       for ids, r in zip(inputs, ref_logits))
        state = model.state_dict()
        identical = None
        if state.keys() == ref_state.keys():
            identical = all(torch.equal(state[k], ref_state[k]) for k in state)
        report = {
            "original": args.original, "exported": path,
            "class": type(model).__name__, "max_abs_logit_diff": diff,
            "rows": len(inputs), "state_dict_bit_identical": identical,
            "load_seconds": round(secs, 2),
        }
        print(json.dumps(report))
        failed |= not diff <= args.tol
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
