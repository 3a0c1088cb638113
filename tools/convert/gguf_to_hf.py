#!/usr/bin/env python3
"""Convert a llama-architecture GGUF file into a Hugging Face checkpoint directory, without torch.

    tools/convert/.venv/bin/python tools/convert/gguf_to_hf.py GGUF OUT_DIR [--force]

Writes OUT_DIR/{config.json, generation_config.json, model.safetensors (f32), tokenizer.json,
tokenizer_config.json, special_tokens_map.json}. Quantised tensors (Q4_1, Q8_0, ...) are
dequantised with gguf.quants.dequantize, so the weights are the *dequantised* values, not the
original bf16 release: they are the reference any comparison with the converted model must use.

llama.cpp stores attn_q / attn_k rows permuted for its RoPE kernel; the permutation is undone here
(n_head for q, n_head_kv for k). Output goes to a temporary directory renamed at the end; an
existing OUT_DIR is only replaced with --force.

Needs: gguf, numpy, safetensors (tools/convert/requirements.txt).
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from safetensors.numpy import save_file

LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is not None:
            return default
        sys.exit(f"error: GGUF metadata key `{key}` is missing")
    return f.contents()


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf `permute` of q/k projection rows."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_name(gguf_name):
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_MAP and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER_MAP[parts[2]]}.weight"
    return None


def tokenizer_files(reader):
    """tokenizer.json (+ config files) for llama.cpp's `gpt2` byte-level BPE vocabularies."""
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        print(f"warning: tokenizer model `{model}` is not gpt2 BPE; no tokenizer.json written",
              file=sys.stderr)
        return None
    pre = field(reader, "tokenizer.ggml.pre", "default")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    bos = int(field(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
    pad = int(field(reader, "tokenizer.ggml.padding_token_id", eos))
    unk = reader.fields.get("tokenizer.ggml.unknown_token_id")
    unk = int(unk.contents()) if unk is not None else None
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if pre == "smollm":
        # llama.cpp's `smollm` pre-tokenizer: every digit on its own, then GPT-2's regex.
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
    elif pre in ("gpt-2", "default"):
        pre_tok = byte_level
    else:
        print(f"warning: pre-tokenizer `{pre}` is not known here; no tokenizer.json written",
              file=sys.stderr)
        return None
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types))
        if int(ty) in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tok,
        "post_processor": dict(byte_level),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
            "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    special = {"bos_token": tokens[bos], "eos_token": tokens[eos], "pad_token": tokens[pad]}
    if unk is not None:
        special["unk_token"] = tokens[unk]
    tok_config = dict(special)
    tok_config.update({
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, "llama.context_length", 2048)),
        "tokenizer_class": "GPT2Tokenizer",
        "additional_special_tokens": [a["content"] for a in added
                                      if a["content"] not in special.values()],
    })
    template = reader.fields.get("tokenizer.chat_template")
    if template is not None:
        tok_config["chat_template"] = template.contents()
    return tokenizer, tok_config, special


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--force", action="store_true", help="replace an existing OUT")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    if os.path.lexists(out) and not args.force:
        sys.exit(f"error: {out} already exists; pass --force to replace it")
    start = time.time()
    reader = GGUFReader(args.gguf)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"error: {args.gguf}: architecture `{arch}` is not supported (only llama)")
    n_head = int(field(reader, "llama.attention.head_count"))
    n_kv = int(field(reader, "llama.attention.head_count_kv", n_head))
    hidden = int(field(reader, "llama.embedding_length"))

    tensors, kinds = {}, {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                sys.exit("error: rope_freqs present (scaled RoPE), which seqtopk does not support")
            print(f"warning: skipping unknown GGUF tensor {t.name}", file=sys.stderr)
            continue
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = w.reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        tensors[name] = np.ascontiguousarray(w)
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    tied = "lm_head.weight" not in tensors
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": int(field(reader, "llama.context_length", 2048)),
        # GGUF stores eps as f32; the HF config holds the decimal it came from.
        "rms_norm_eps": float(f"{eps:.6g}"),
        "rope_parameters": {"rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
                            "rope_type": "default"},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "dtype": "float32",
    }
    gen = {}
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("padding_token_id", "pad_token_id")):
        f = reader.fields.get(f"tokenizer.ggml.{key}")
        if f is not None:
            config[hf] = int(f.contents())
            gen[hf] = int(f.contents())

    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(gen, f, indent=2)
        tok = tokenizer_files(reader)
        if tok is not None:
            tokenizer, tok_config, special = tok
            with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
                json.dump(tokenizer, f, ensure_ascii=False)
            with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
                json.dump(tok_config, f, indent=2, ensure_ascii=False)
            with open(os.path.join(tmp, "special_tokens_map.json"), "w") as f:
                json.dump(special, f, indent=2, ensure_ascii=False)
        if os.path.lexists(out):
            old = f"{out}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    params = sum(int(v.size) for v in tensors.values())
    print(json.dumps({
        "out": out, "tensors": len(tensors), "parameters": params, "gguf_types": kinds,
        "tied_embeddings": tied, "tokenizer": tok is not None,
        "seconds": round(time.time() - start, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
