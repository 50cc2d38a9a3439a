#!/usr/bin/env python3
"""Records what the Hugging Face `tokenizers` library gives for the fixture tokenizer, so that the
Swift tests can compare without Python.

    python3 scripts/tokenizer_vectors.py   # writes fixtures/tokenizers/llama-spm/vectors.json

Strings: llama.cpp's test strings for this vocabulary (../shared/data/vocab/*.inp) plus prose,
code, mixed scripts, emoji, whitespace runs and special-token text embedded in prose.
"""
import json
import os
import random

import tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "fixtures", "tokenizers", "llama-spm")
INP = os.path.join(ROOT, "..", "shared", "data", "vocab", "ggml-vocab-llama-spm.gguf.inp")


def corpus():
    with open(INP, encoding="utf-8") as f:
        strings = f.read().split("\n__ggml_vocab_test__\n")
    strings = [s for s in strings if s != ""] + [""]
    strings += [
        "The old lighthouse keeper", "Hello world", " Hello world", "Hello  world", "\tTabs\tand\nnewlines\n",
        "<s>Hello</s>", "Text with <s> inside and </s> at the end", "<unk> token", "<s><s></s>",
        "def f(x):\n    return x * 2  # double\n", "if (a < b && c > d) { return 0; }",
        "Ünïcödé façade naïve café", "日本語のテキスト", "中文和English混合", "Привет, мир!", "مرحبا بالعالم",
        "emoji 🦙🚀 and flags 🇫🇷", "combining e\u0301 vs \u00e9", "numbers 1234567890 3.14159 -42",
        "   leading spaces", "trailing spaces   ", "\n\n\n", " ", "a", "▁already▁has▁metaspace",
        "ZWJ family 👨\u200d👩\u200d👧", "Mixed\u00a0nbsp\u2009thin", "tab\t\ttab", "CAPS LOCK AND lower",
    ]
    rng = random.Random(7)
    pieces = ["the", " ", "  ", "\n", "\t", "é", "ß", "日本", "🦙", "<s>", "</s>", "42", "x", "—", "(", ")", "\u0301", "Ω"]
    for _ in range(200):
        strings.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return strings


def main():
    tok = tokenizers.Tokenizer.from_file(os.path.join(TOKENIZER, "tokenizer.json"))
    cases = []
    for s in corpus():
        with_special = tok.encode(s).ids
        without = tok.encode(s, add_special_tokens=False).ids
        cases.append(dict(text=s, ids=with_special, ids_no_special=without,
                          decoded=tok.decode(with_special, skip_special_tokens=True),
                          decoded_with_special=tok.decode(with_special, skip_special_tokens=False)))
    with open(os.path.join(TOKENIZER, "vectors.json"), "w", encoding="utf-8") as f:
        json.dump(dict(tokenizers=tokenizers.__version__, cases=cases), f, ensure_ascii=False, indent=0)
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
