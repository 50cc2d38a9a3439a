#!/usr/bin/env python3
"""Every bad input gives one line on stderr and exit status 1: never a crash, never a trace.

    python3 scripts/check_cli_errors.py [path/to/switchyard]

Builds broken copies of a fixture model (Python standard library only) and runs the real binary.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "fixtures", "models", "mixtral")


def copy_fixture(work, name):
    d = os.path.join(work, name)
    os.makedirs(d)
    for f in os.listdir(FIXTURE):
        src = os.path.join(FIXTURE, f)
        if os.path.isfile(src):
            shutil.copy(src, d)  # follows the tokenizer symlinks
    return d


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_safetensors(path, header, body):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + body)


def edit_header(work, name, change):
    d = copy_fixture(work, name)
    path = os.path.join(d, "model.safetensors")
    header, body = read_safetensors(path)
    change(header)
    write_safetensors(path, header, body)
    return d


def malformed_number(work, name, key, literal):
    """config.json with `key` set to a literal Python's json would write (NaN) or one past float64 (1e999)."""
    d = copy_fixture(work, name)
    path = os.path.join(d, "config.json")
    with open(path) as f:
        obj = json.load(f)
    obj[key] = "__MARK__"
    with open(path, "w") as f:
        f.write(json.dumps(obj).replace('"__MARK__"', literal))
    return d


def edit_json(work, name, file, change):
    d = copy_fixture(work, name)
    path = os.path.join(d, file)
    with open(path) as f:
        obj = json.load(f)
    change(obj)
    with open(path, "w") as f:
        json.dump(obj, f)
    return d


def edited_config(work, name, source, change):
    """A folder holding only a published config (benchmarks/configs/SOURCE) with `change` made."""
    d = os.path.join(work, name)
    os.makedirs(d)
    with open(os.path.join(ROOT, "benchmarks", "configs", source, "config.json")) as f:
        obj = json.load(f)
    change(obj)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(obj, f)
    return d


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "debug", "switchyard")
    work = tempfile.mkdtemp()
    name = "model.layers.0.self_attn.q_proj.weight"

    def truncated():
        d = copy_fixture(work, "truncated")
        path = os.path.join(d, "model.safetensors")
        os.truncate(path, os.path.getsize(path) // 2)
        return d

    def out_of_range(h):
        h[name]["data_offsets"][1] += 10 ** 9

    def overlapping(h):
        other = "model.layers.0.self_attn.k_proj.weight"
        size = h[other]["data_offsets"][1] - h[other]["data_offsets"][0]
        h[other]["data_offsets"] = [h[name]["data_offsets"][0], h[name]["data_offsets"][0] + size]

    def wrong_size(h):
        h[name]["shape"] = [h[name]["shape"][0], h[name]["shape"][1] + 1]

    def unknown_dtype(h):
        h[name]["dtype"] = "Q4_K"

    def int_dtype(h):
        h[name]["dtype"] = "I16"

    def malformed(path):
        d = copy_fixture(work, os.path.basename(path))
        with open(os.path.join(d, path.split("/")[0]), "w") as f:
            f.write('{"model_type": "mixtral", ')
        return d

    def bad_tokenizer():
        d = copy_fixture(work, "badtok")
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            f.write('{"model": {"type": "BPE", "vocab": {')
        return d

    def no_tokenizer():
        d = copy_fixture(work, "notok")
        os.remove(os.path.join(d, "tokenizer.json"))
        return d

    def quantized():
        d = os.path.join(work, "quantized")
        subprocess.run([binary, "quantize", "--model", FIXTURE, "--type", "q8_0", "--out", d], check=True, capture_output=True)
        return d

    def nan_weight(name="nan"):
        # One NaN in the output head: argmax over NaN logits would quietly pick token 0.
        d = copy_fixture(work, name)
        path = os.path.join(d, "model.safetensors")
        header, body = read_safetensors(path)
        begin = header["lm_head.weight"]["data_offsets"][0]
        body = body[:begin] + struct.pack("<H", 0x7FC0) + body[begin + 2:]
        write_safetensors(path, header, body)
        return d

    def edit_tokenizer(name, change):
        d = copy_fixture(work, name)
        path = os.path.join(d, "tokenizer.json")
        with open(path) as f:
            tok = json.load(f)
        change(tok)
        with open(path, "w") as f:
            json.dump(tok, f)
        return d

    def first_vocab_entry(tok, value):
        key = next(iter(tok["model"]["vocab"]))
        tok["model"]["vocab"][key] = value

    def template(source):
        path = os.path.join(work, "t%d.jinja" % abs(hash(source)))
        with open(path, "w") as f:
            f.write(source)
        return ["template", "--model", FIXTURE, "--messages", conversation, "--template", path]

    conversation = os.path.join(work, "conversation.json")
    with open(conversation, "w") as f:
        f.write('[{"role": "user", "content": "hi"}]')

    def short_text():
        path = os.path.join(work, "short.txt")
        with open(path, "w") as f:
            f.write("In the beginning God created the heaven and the earth.\n")
        return path

    def cut_base():
        # A valid header (context 8, vocabulary 32000, 2 chunks, tokens) and no rows.
        path = os.path.join(work, "cut.kld")
        with open(path, "wb") as f:
            f.write(b"_logits_" + struct.pack("<Iii", 8, 32000, 2) + struct.pack("<16i", *range(16)))
        return path

    gguf_fixture = os.path.join(ROOT, "fixtures", "gguf", "qwen3-iq4.gguf")

    def gguf_variant(name, change):
        with open(gguf_fixture, "rb") as f:
            data = bytearray(f.read())
        change(data)
        path = os.path.join(work, name + ".gguf")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def gguf_truncate(data):
        del data[len(data) // 2:]

    def gguf_architecture(data):
        at = data.index(b"qwen3", data.index(b"general.architecture"))
        data[at:at + 5] = b"xwen9"

    def gguf_version(data):
        data[4:8] = struct.pack("<I", 9)

    def gguf_tensor_count(data):
        data[8:16] = struct.pack("<Q", 2 ** 62)

    huge = str(2 ** 63 - 1)
    gen = ["generate", "--prompt", "Hello", "--max-tokens", "2", "--temperature", "0"]
    cases = [
        ("missing folder", ["info", "--model", "/nonexistent/model"], "config.json"),
        ("truncated weights", ["info", "--model", truncated()], "truncated"),
        ("offsets out of range", ["info", "--model", edit_header(work, "range", out_of_range)], name),
        ("overlapping tensors", ["info", "--model", edit_header(work, "overlap", overlapping)], "overlap"),
        ("wrong size for dtype and shape", ["info", "--model", edit_header(work, "size", wrong_size)], name),
        ("unknown dtype", ["info", "--model", edit_header(work, "dtype", unknown_dtype)], "Q4_K"),
        ("unsupported weight dtype", ["info", "--model", edit_header(work, "i16", int_dtype)], "I16"),
        ("unknown architecture", ["info", "--model", edit_json(work, "arch", "config.json",
                                                              lambda c: c.update(model_type="gpt_neox"))], "olmoe"),
        ("mistyped config key", ["info", "--model", edit_json(work, "type", "config.json",
                                                             lambda c: c.update(hidden_size="32"))], "hidden_size"),
        ("malformed config.json", ["info", "--model", malformed("config.json")], "config.json"),
        ("malformed tokenizer.json", gen + ["--model", bad_tokenizer()], "tokenizer.json"),
        ("truncated GGUF file", ["info", "--model", gguf_variant("cut", gguf_truncate)], "truncated"),
        ("GGUF of an unknown architecture", ["info", "--model", gguf_variant("arch", gguf_architecture)], "xwen9"),
        ("GGUF version 9", gen + ["--model", gguf_variant("version", gguf_version)], "version 9"),
        ("GGUF tensor count past the file", ["info", "--model", gguf_variant("count", gguf_tensor_count)], "tensor count"),
        ("quantize q6_k into a folder", ["quantize", "--type", "q6_k", "--out", os.path.join(work, "q6k")], "GGUF files only"),
        ("missing tokenizer.json", gen + ["--model", no_tokenizer()], "tokenizer.json"),
        ("over-long prompt", ["generate", "--prompt", "a prompt that is much longer than three tokens", "--model", FIXTURE, "--context-length", "3"], "context length"),
        ("token outside the vocabulary", ["logits", "--model", FIXTURE, "--tokens", "1,99999", "--out",
                                          os.path.join(work, "x.npy")], "99999"),
        ("not a token id", ["logits", "--model", FIXTURE, "--tokens", "1,abc", "--out", os.path.join(work, "x.npy")], "abc"),
        ("unwritable output", ["logits", "--model", FIXTURE, "--tokens", "1,2", "--out", "/nonexistent/dir/x.npy"], "x.npy"),
        ("detokenize outside the vocabulary", ["detokenize", "--model", FIXTURE, "--tokens", "5,40000"], "40000"),
        ("no usable GPU for --accelerator cuda", gen + ["--model", FIXTURE, "--accelerator", "cuda"], "CUDA"),
        ("quantize into the model's own folder", ["quantize", "--model", FIXTURE, "--type", "q8_0", "--out", FIXTURE], "another folder"),
        ("quantize a quantised model", ["quantize", "--model", quantized(), "--type", "q4_0", "--out", os.path.join(work, "q2")], "already quantised"),
        ("RAM budget too small", gen + ["--model", FIXTURE, "--ram-budget", "1MB"], "--ram-budget"),
        ("not a size", gen + ["--model", FIXTURE, "--ram-budget", "lots"], "lots"),
        ("RAM budget with random weights", gen + ["--model", FIXTURE, "--ram-budget", "1GB", "--random-weights"], "--random-weights"),
        ("unwritable trace", gen + ["--model", FIXTURE, "--ram-budget", "1GB", "--trace", "/nonexistent/dir/t.jsonl"], "t.jsonl"),
        ("a pipeline group count of 0", gen + ["--model", FIXTURE, "--ram-budget", "1GB", "--expert-pipeline", "0"], "--expert-pipeline"),
        ("--ubatch near Int64.max", gen + ["--model", FIXTURE, "--ubatch", huge], "--ubatch"),
        ("perplexity on a text too short", ["perplexity", "--model", FIXTURE, "-f", short_text(), "-c", "64"], "at least twice"),
        ("perplexity --ctx-size near Int64.max", ["perplexity", "--model", FIXTURE, "-f", short_text(), "-c", huge], "--ctx-size"),
        ("--kl-divergence without a base", ["perplexity", "--model", FIXTURE, "--kl-divergence"], "--kl-divergence-base"),
        ("not a base file", ["perplexity", "--model", FIXTURE, "--kl-divergence", "--kl-divergence-base", short_text()], "_logits_"),
        ("a base file cut short", ["perplexity", "--model", FIXTURE, "--kl-divergence", "--kl-divergence-base", cut_base()], "the file has"),
        ("not a link rate", gen + ["--model", FIXTURE, "--accelerator", "emulated", "--accelerator-memory", "64MiB",
                                   "--accelerator-link", "fast"], "fast"),
        ("a link rate without the emulated accelerator", gen + ["--model", FIXTURE, "--accelerator-link", "1GB/s"], "--accelerator-link"),
        ("an unknown expert kernel", gen + ["--model", FIXTURE, "--expert-kernel", "sparse"], "--expert-kernel"),
        ("--expert-timeout nan", gen + ["--model", FIXTURE, "--expert-timeout", "nan"], "--expert-timeout"),
        ("not an expert host address", gen + ["--model", FIXTURE, "--expert-workers", "nohost"], "nohost"),
        ("no expert host there", gen + ["--model", FIXTURE, "--expert-workers", "127.0.0.1:1"], "127.0.0.1:1"),
        ("expert hosts for a dense model", gen + ["--model", os.path.join(ROOT, "fixtures/models/llama"), "--expert-workers", "127.0.0.1:1"],
         "no routed experts"),
        # Numbers from flags, checked before any arithmetic.
        ("--max-tokens near Int64.max", ["generate", "--model", FIXTURE, "--prompt", "Hi", "--max-tokens", huge], "--max-tokens"),
        ("--top-k near Int64.max", gen + ["--model", FIXTURE, "--top-k", huge], "--top-k"),
        ("--context-length near Int64.max", gen + ["--model", FIXTURE, "--context-length", huge], "--context-length"),
        ("--max-sequences near Int64.max", ["serve", "--model", FIXTURE, "--max-sequences", huge], "--max-sequences"),
        ("--threads near Int64.max", gen + ["--model", FIXTURE, "--threads", huge], "--threads"),
        ("--temperature nan", ["generate", "--model", FIXTURE, "--prompt", "Hi", "--temperature", "nan"], "--temperature"),
        ("--repeat-penalty nan", gen + ["--model", FIXTURE, "--repeat-penalty", "nan"], "--repeat-penalty"),
        ("emulated accelerator larger than the machine", gen + ["--model", FIXTURE, "--accelerator", "emulated",
                                                              "--accelerator-memory", "64TB"], "accelerator"),
        ("full standard output", ["tokenize", "--model", FIXTURE, "--text", "Hello"], "write error", "/dev/full"),
        # config.json values a file may hold, each checked before it sizes anything.
        ("sliding_window 0", ["info", "--model", edit_json(work, "sw0", "config.json", lambda c: c.update(sliding_window=0))], "sliding_window"),
        ("DeepSeek n_group not dividing the experts", ["info", "--random-weights", "--model",
                                                       edited_config(work, "dsg", "deepseek-v3", lambda c: c.update(n_group=7))], "n_group"),
        ("DeepSeek unknown topk_method", ["plan", "--model", edited_config(work, "dsm", "deepseek-v3", lambda c: c.update(topk_method="random"))],
         "topk_method"),
        ("DeepSeek kv_lora_rank 2^40", ["info", "--random-weights", "--model",
                                        edited_config(work, "dsr", "deepseek-v2-lite", lambda c: c.update(kv_lora_rank=2 ** 40))], "kv_lora_rank"),
        ("quantize GPT-OSS's input-major experts", ["quantize", "--model", os.path.join(ROOT, "fixtures", "models", "gpt_oss"), "--type", "q8_0",
                                                    "--out", os.path.join(work, "oss-q8")], "input-major"),
        ("GPT-OSS unknown quantization", ["info", "--random-weights", "--model",
                                          edited_config(work, "goq", "gpt-oss-120b", lambda c: c["quantization_config"].update(quant_method="fp8"))],
         "quant_method"),
        ("sliding_window negative", gen + ["--model", edit_json(work, "swneg", "config.json", lambda c: c.update(sliding_window=-4))],
         "sliding_window"),
        ("max_position_embeddings 2^40", gen + ["--model", edit_json(work, "maxpos", "config.json",
                                                                   lambda c: c.update(max_position_embeddings=2 ** 40))], "max_position_embeddings"),
        ("max_position_embeddings 2^63-1", ["plan", "--model", edit_json(work, "maxpos2", "config.json",
                                                                        lambda c: c.update(max_position_embeddings=2 ** 63 - 1))], "max_position_embeddings"),
        ("head_dim 2^61", ["info", "--model", edit_json(work, "hd", "config.json", lambda c: c.update(head_dim=2 ** 61))], "head_dim"),
        ("partial_rotary_factor 1e30", ["info", "--model", edit_json(work, "prf", "config.json",
                                                                    lambda c: c.update(partial_rotary_factor=1e30))], "partial_rotary_factor"),
        ("num_hidden_layers 1e9", ["info", "--model", edit_json(work, "layers", "config.json",
                                                               lambda c: c.update(num_hidden_layers=10 ** 9))], "num_hidden_layers"),
        ("huge sizes in plan", ["plan", "--model", edit_json(work, "planhuge", "config.json",
                                                             lambda c: c.update(hidden_size=2 ** 40, vocab_size=2 ** 40))], "hidden_size"),
        ("NaN in config.json", ["info", "--model", malformed_number(work, "nanconfig", "rms_norm_eps", "NaN")], "rms_norm_eps"),
        ("1e999 in config.json", ["info", "--model", malformed_number(work, "infconfig", "rope_theta", "1e999")], "rope_theta"),
        # tokenizer.json
        ("added token id -1", gen + ["--model", edit_tokenizer("addneg", lambda t: t["added_tokens"][0].update(id=-1))], "<unk>"),
        ("added token id 10^12", gen + ["--model", edit_tokenizer("addbig", lambda t: t["added_tokens"][0].update(id=10 ** 12))], "<unk>"),
        ("vocab id 2^63-1", gen + ["--model", edit_tokenizer("vocabbig", lambda t: first_vocab_entry(t, 2 ** 63 - 1))], "vocab entry"),
        ("exponential Split regex", gen + ["--model", edit_tokenizer("regex", lambda t: t.update(pre_tokenizer={
            "type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}))], "exponential"),
        # Chat templates run in bounds, as jinja2's sandbox does.
        ("recursive template", template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), "levels deep"),
        ("integer overflow in a template", template("{{ 9223372036854775807 * 2 }}"), "overflow"),
        ("huge string in a template", template("{{ 'a' * 10000000000 }}"), "output"),
        ("huge range in a template", template("{% for i in range(1000000000) %}{% endfor %}"), "range"),
        # Weights
        ("a NaN weight", gen + ["--model", nan_weight()], "non-finite"),
        ("--check-tensors names it", ["logits", "--model", nan_weight("nan2"), "--tokens", "1,2", "--check-tensors", "--out",
                                      os.path.join(work, "y.npy")], "lm_head.weight"),
    ]
    failures = 0
    for title, args, mention, *stdout in cases:
        out = open(stdout[0], "w") if stdout else subprocess.PIPE
        p = subprocess.run([binary] + args, stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        ok = p.returncode == 1 and len(lines) == 1 and mention in lines[0] and lines[0].startswith("error: ")
        failures += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {title}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    # Not an error: a chat that outgrows its context drops its oldest turns and goes on.
    turns = "".join(f"And it came to pass in the {n} year of the reign of the king that the people went up\n"
                    for n in ["first", "second", "third", "fourth", "fifth"])
    p = subprocess.run([binary, "chat", "--model", os.path.join(ROOT, "models", "switchyard-kjv-moe"), "--context-length", "48", "--max-tokens", "4", "--temperature", "0"],
                       input=turns, capture_output=True, text=True, timeout=120)
    ok = p.returncode == 0 and p.stdout.count("> ") == 6
    failures += 0 if ok else 1
    print(f"{'ok  ' if ok else 'FAIL'} chat outgrowing its context keeps going: exit {p.returncode}, {p.stdout.count('> ')} prompts")
    shutil.rmtree(work)
    print(f"{len(cases) + 1 - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
