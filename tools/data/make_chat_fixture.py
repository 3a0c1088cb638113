#!/usr/bin/env python3
"""Write crates/data/tests/fixtures/chat_templates.json: what transformers' apply_chat_template
gives for a set of conversations, to check the Rust chat templates against.

Run (creates/uses the venv tools/data/.venv; transformers needs no torch for templating):
    tools/data/.venv/bin/pip install transformers tokenizers jinja2
    tools/data/.venv/bin/python tools/data/make_chat_fixture.py

Templates (Jinja strings, verbatim):
  * "olmoe": the chat_template of allenai/OLMoE-1B-7B-0924-Instruct's tokenizer_config.json, which
    is the Tulu template of allenai/open-instruct prefixed by `{{ bos_token }}` (the same string as
    allenai/OLMo-2-1124-7B-SFT/-Instruct). bos_token and eos_token are both "<|endoftext|>" there.
  * "tulu": open-instruct's CHAT_TEMPLATES["tulu"] (the same without `{{ bos_token }}`).
  * "chatml": the chat_template of Qwen/Qwen2-7B-Instruct's tokenizer_config.json (eos "<|im_end|>",
    bos null), i.e. ChatML with a default system turn.
Those model repos are on the Hugging Face hub, which this machine cannot reach; the strings were
transcribed from the published tokenizer_config.json files (cross-checked against several public
copies of the same strings). The tokenizer is the real OLMoE one (ai2-olmo-eval==0.9.0), loaded
from data/samples/tokenizers/olmoe/tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "data/samples/tokenizers/olmoe/tokenizer.json"
OUT = ROOT / "crates/data/tests/fixtures/chat_templates.json"

TULU = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
)
OLMOE = "{{ bos_token }}" + TULU
QWEN2_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES = {
    "olmoe": (OLMOE, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    "tulu": (TULU, {"eos_token": "<|endoftext|>"}),
    # The ChatML template spells <|im_end|> out itself and uses no special-token variable. Not
    # registering <|im_end|> keeps the OLMoE vocabulary unchanged (it would be *added* otherwise).
    "chatml": (QWEN2_CHATML, {}),
}


def conversations() -> list[tuple[str, list[dict]]]:
    convs: list[tuple[str, list[dict]]] = [
        ("single_turn", [
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "2 + 3 = 5."},
        ]),
        ("system_multi_turn", [
            {"role": "system", "content": "You are a careful legal assistant."},
            {"role": "user", "content": "Is a verbal contract binding?"},
            {"role": "assistant", "content": "Often, yes.\nSome contracts must be in writing."},
            {"role": "user", "content": "Which ones?"},
            {"role": "assistant", "content": "For example, sales of land (the Statute of Frauds)."},
        ]),
        ("unicode_and_spaces", [
            {"role": "user", "content": "  Übersetze: «naïve café» — 日本語も。  "},
            {"role": "assistant", "content": " naive cafe\n\n  (indented)\t tab"},
        ]),
        ("code", [
            {"role": "user", "content": "Write a Python function that adds two numbers."},
            {"role": "assistant", "content": "```python\ndef add(a, b):\n    return a + b\n```"},
        ]),
        ("ends_with_user", [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Bye"},
        ]),
    ]
    # Two real conversations from the committed samples (ESFT law, GSM8K).
    esft = ROOT / "data/samples/law/esft_train_law.jsonl"
    with open(esft, encoding="utf-8") as f:
        rec = json.loads(f.readline())
    convs.append(("esft_law_first", [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]))
    gsm = ROOT / "data/samples/math/gsm8k_test.jsonl"
    with open(gsm, encoding="utf-8") as f:
        rec = json.loads(f.readline())
    convs.append(("gsm8k_first", [
        {"role": "user", "content": rec["prompt"]},
        {"role": "assistant", "content": rec["completion"]},
    ]))
    return convs


def main() -> None:
    toks = {k: PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), **special) for k, (_, special) in TEMPLATES.items()}
    cases = []
    for name, messages in conversations():
        for template_name, (template, _) in TEMPLATES.items():
            tok = toks[template_name]
            for gen in (False, True):
                text = tok.apply_chat_template(
                    messages, chat_template=template, tokenize=False, add_generation_prompt=gen
                )
                ids = tok(text, add_special_tokens=False)["input_ids"]
                cases.append({
                    "name": name,
                    "template": template_name,
                    "add_generation_prompt": gen,
                    "messages": messages,
                    "text": text,
                    "olmoe_ids": ids,
                })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fixture = {
        "generator": "tools/data/make_chat_fixture.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tokenizer": "data/samples/tokenizers/olmoe/tokenizer.json (ai2-olmo-eval==0.9.0)",
        "templates": {k: v[0] for k, v in TEMPLATES.items()},
        "cases": cases,
    }
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
