#!/usr/bin/env python3
"""Records what the Hugging Face `tokenizers` library gives, so that the Swift tests compare with
it without Python.

    pip install transformers tokenizers gguf
    python3 scripts/tokenizer_vectors.py

Writes fixtures/tokenizers/:
  llama-spm/tokenizer.json, gpt-2/tokenizer.json   converted from ../shared/data/vocab by transformers
  variants.json   the tokenizer.json pipelines of the families Switchyard reads (Qwen2/3, Llama 3,
                  DeepSeek-V3, GPT-OSS, OLMoE, SentencePiece with split...), each as overrides of
                  one of the two base files: the same components and settings as the real releases,
                  on a vocabulary small enough to commit
  <name>.vectors.json   for every tokenizer: the ids of 2,000+ strings (llama.cpp's test strings,
                  prose, code, mixed scripts, emoji, combining marks, whitespace runs, special-token
                  text in prose) with and without special tokens, and the decoded text
"""
import copy
import json
import os
import random

import tokenizers

from hf_convert import convert_gguf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "tokenizers")
SHARED = os.path.join(ROOT, "..", "shared", "data", "vocab")

LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
O200K_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_REGEXES = [r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]


def split(regex, behavior="Isolated", invert=False):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": behavior, "invert": invert}


def byte_level(add_prefix_space=False, use_regex=False):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def added(id, content, special=True, **flags):
    return dict(id=id, content=content, single_word=flags.get("single_word", False), lstrip=flags.get("lstrip", False),
                rstrip=flags.get("rstrip", False), normalized=False, special=special)


def template(bos_name, bos_id):
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_name: {"id": bos_name, "ids": [bos_id], "tokens": [bos_name]}}}


# Extra special tokens go after the GPT-2 vocabulary (50257 entries).
CHAT_TOKENS = [added(50257, "<|im_start|>"), added(50258, "<|im_end|>"), added(50259, "<|begin_of_text|>"),
               added(50260, "<think>", special=False), added(50261, "<tool▁call>", lstrip=True, rstrip=True),
               added(50262, "[INST]", single_word=True)]

VARIANTS = {
    "qwen2": dict(base="gpt-2", normalizer={"type": "NFC"},
                  pre_tokenizer={"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level()]},
                  added_tokens=CHAT_TOKENS),
    "nfkc-lowercase": dict(base="gpt-2", normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
                           pre_tokenizer=byte_level(add_prefix_space=True, use_regex=True)),
    "nfd-metaspace": dict(base="llama-spm", normalizer={"type": "NFD"}),
    "llama3": dict(base="gpt-2", pre_tokenizer={"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level()]},
                   model={"ignore_merges": True}, added_tokens=CHAT_TOKENS,
                   post_processor={"type": "Sequence", "processors": [byte_level(), template("<|begin_of_text|>", 50259)]}),
    "deepseek-v3": dict(base="gpt-2", pre_tokenizer={"type": "Sequence", "pretokenizers": [split(r) for r in DEEPSEEK_REGEXES] + [byte_level()]},
                        added_tokens=CHAT_TOKENS, post_processor=template("<|begin_of_text|>", 50259)),
    "gpt-oss": dict(base="gpt-2", pre_tokenizer={"type": "Sequence", "pretokenizers": [split(O200K_REGEX), byte_level()]},
                    added_tokens=CHAT_TOKENS),
    "olmoe": dict(base="gpt-2", pre_tokenizer=byte_level(add_prefix_space=False, use_regex=True), post_processor=byte_level()),
    "byte-level-prefix": dict(base="gpt-2", pre_tokenizer=byte_level(add_prefix_space=True, use_regex=True)),
    "split-behaviours": dict(base="gpt-2", pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"String": "$"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"String": "#"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": r"[()]"}, "behavior": "Contiguous", "invert": False},
        {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "WhitespaceSplit"}, byte_level(add_prefix_space=True)]}),
    "whitespace-digits": dict(base="gpt-2", pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"}, {"type": "Digits", "individual_digits": False}, byte_level()]},
        normalizer={"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": True, "strip_right": True},
                                                        {"type": "Lowercase"},
                                                        {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}]}),
    "metaspace-split": dict(base="llama-spm", pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
                            decoder={"type": "Sequence", "decoders": [{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
                                                                      {"type": "ByteFallback"}, {"type": "Fuse"}]}),
    "prepend-normalizer": dict(base="llama-spm", pre_tokenizer=None,
                               normalizer={"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                                               {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
}


def apply_variant(base, variant):
    data = copy.deepcopy(base)
    for key, value in variant.items():
        if key == "base":
            continue
        if key == "model":
            data["model"].update(value)
        elif key == "added_tokens":
            data["added_tokens"] = data["added_tokens"] + value
        else:
            data[key] = value
    return data


def corpus(seed, inp):
    with open(inp, encoding="utf-8") as f:
        strings = [s for s in f.read().split("\n__ggml_vocab_test__\n") if s != ""]
    strings += [
        "", " ", "a", "The old lighthouse keeper", "Hello world", " Hello world", "Hello  world", "\tTabs\tand\nnewlines\n",
        "I'm sure they'll say you've done it. WE'RE DONE; IT'S OK", "def f(x):\n    return x * 2  # double\n",
        "if (a < b && c > d) { return 0; }\r\n", "price: $12.50 - 3.5% off (approx.) #deal", "--flag=value ../path/to-file",
        "Ünïcödé façade naïve café", "日本語のテキストです。", "中文和English混合123", "Привет, мир!", "مرحبا بالعالم",
        "emoji 🦙🚀 and flags 🇫🇷", "combining e\u0301 vs \u00e9", "ZWJ family 👨\u200d👩\u200d👧", "Mixed\u00a0nbsp\u2009thin",
        "<|im_start|>user\nHi<|im_end|>", "<s>Hello</s>", "before<think>inside</think>after", "a <tool▁call> b",
        "[INST] x [INST]y x[INST]", "<|begin_of_text|>Start", "1234567890 3.14159 -42 1,000,000",
    ]
    rng = random.Random(seed)
    pieces = ["the", "The", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "é", "e\u0301", "ß", "日本", "語", "한국어", "🦙", "👍🏽",
              "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "<tool▁call>", "[INST]", "42", "7", "12345", "x", "—",
              "(", ")", "$", "#", "-", "'s", "'LL", "don't", "Ω", "\u0301", "ﬁ", "..", "!?", "/", "\\", "{", "}", "::", "=>",
              "def", "return", "café", "naïve", "Ελληνικά", "עברית", "हिन्दी", "ไทย", "\u200b", "\u00a0", "▁", "<0x41>", "<unk>",
              "한글", "\u1112\u1161\u11ab", "Việt", "e\u0323\u0302", "ﬁ", "①", "ｆｕｌｌ", "㎏", "Å", "\u212b", "Ǆ", "ΐ", "ﾊﾝｶｸ"]
    while len(strings) < 2000:
        n = rng.randint(1, 8)
        strings.append("".join(rng.choice(pieces) for _ in range(n)))
    return strings


def vectors(tok, strings):
    # What add_special_tokens puts in front (the post-processor's BOS): ids_no_special is stored
    # only where it is not simply `ids` without that prefix.
    prefix = len(tok.encode("").ids) - len(tok.encode("", add_special_tokens=False).ids)
    cases = []
    for s in strings:
        ids = tok.encode(s).ids
        no_special = tok.encode(s, add_special_tokens=False).ids
        case = dict(text=s, ids=ids)
        if no_special != ids[prefix:]:
            case["ids_no_special"] = no_special
        decoded = tok.decode(ids, skip_special_tokens=True)
        if decoded != s:
            case["decoded"] = decoded
        with_special = tok.decode(ids, skip_special_tokens=False)
        if with_special != decoded:
            case["decoded_with_special"] = with_special
        cases.append(case)
    return prefix, cases


def normalization_vectors(strings):
    import unicodedata
    return [dict(text=s, **{form: unicodedata.normalize(form, s) for form in ("NFC", "NFD", "NFKC", "NFKD")})
            for s in strings if any(ord(c) > 127 for c in s)]


def train_small_tokenizers(strings):
    """Two tokenizers trained here with the `tokenizers` library, for the BPE options the shared
    vocabularies do not use: end_of_word_suffix with its BPEDecoder, and continuing_subword_prefix
    with the WordPiece decoder, NFKC + Lowercase, fused unknowns and a normalized added token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    text = [s for s in strings if s.strip()]
    suffix = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))
    suffix.pre_tokenizer = pre_tokenizers.Whitespace()
    suffix.decoder = decoders.BPEDecoder(suffix="</w>")
    suffix.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, special_tokens=["[UNK]", "<s>", "</s>"],
                                                          end_of_word_suffix="</w>", show_progress=False))
    prefix = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", fuse_unk=True))
    prefix.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    prefix.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    prefix.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    ascii_text = [s for s in text if s.isascii()]
    prefix.train_from_iterator(ascii_text, trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", "[CLS]"],
                                                                continuing_subword_prefix="##", show_progress=False))
    prefix.add_tokens([AddedToken("hello world", normalized=True), AddedToken("[RAW]", normalized=False)])
    for name, tok in (("trained-suffix", suffix), ("trained-prefix", prefix)):
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tok.to_str())


def main():
    bases = {}
    inputs_for_training = "ggml-vocab-gpt-2.gguf.inp"
    for name, gguf in (("llama-spm", "ggml-vocab-llama-spm.gguf"), ("gpt-2", "ggml-vocab-gpt-2.gguf")):
        folder = os.path.join(OUT, name)
        if not os.path.exists(os.path.join(folder, "tokenizer.json")):
            convert_gguf_tokenizer(gguf, folder)
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            bases[name] = json.load(f)
    train_small_tokenizers(corpus(99, os.path.join(SHARED, inputs_for_training)))
    for name in ("trained-suffix", "trained-prefix"):
        with open(os.path.join(OUT, name, "tokenizer.json"), encoding="utf-8") as f:
            bases[name] = json.load(f)
    with open(os.path.join(OUT, "variants.json"), "w", encoding="utf-8") as f:
        json.dump(VARIANTS, f, ensure_ascii=False, indent=1)
    inputs = {"llama-spm": "ggml-vocab-llama-spm.gguf.inp", "gpt-2": "ggml-vocab-gpt-2.gguf.inp",
              "trained-suffix": "ggml-vocab-gpt-2.gguf.inp", "trained-prefix": "ggml-vocab-gpt-2.gguf.inp"}
    all_names = list(bases) + list(VARIANTS)
    for i, name in enumerate(all_names):
        base_name = name if name in bases else VARIANTS[name]["base"]
        data = bases[name] if name in bases else apply_variant(bases[base_name], VARIANTS[name])
        tok = tokenizers.Tokenizer.from_str(json.dumps(data))
        strings = corpus(100 + i, os.path.join(SHARED, inputs[base_name]))
        prefix, cases = vectors(tok, strings)
        with open(os.path.join(OUT, f"{name}.vectors.json"), "w", encoding="utf-8") as f:
            json.dump(dict(tokenizer=name, base=base_name, tokenizers=tokenizers.__version__, special_prefix=prefix, cases=cases), f,
                      ensure_ascii=False, separators=(",", ":"))
        print(f"{name}: {len(cases)} cases")
    import unicodedata
    with open(os.path.join(OUT, "normalization.json"), "w", encoding="utf-8") as f:
        json.dump(dict(unicode=unicodedata.unidata_version, cases=normalization_vectors(corpus(7, os.path.join(SHARED, inputs["gpt-2"]))[:1200])),
                  f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
