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


def edit_json(work, name, file, change):
    d = copy_fixture(work, name)
    path = os.path.join(d, file)
    with open(path) as f:
        obj = json.load(f)
    change(obj)
    with open(path, "w") as f:
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
    ]
    failures = 0
    for title, args, mention in cases:
        p = subprocess.run([binary] + args, capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        ok = p.returncode == 1 and len(lines) == 1 and mention in lines[0] and lines[0].startswith("error: ")
        failures += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {title}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    shutil.rmtree(work)
    print(f"{len(cases) - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
