#!/usr/bin/env python3
"""Offline batch throughput, side by side: `switchyard batch` against llama.cpp's `llama-server
--parallel N` driven by a concurrent client over the same requests (the batch issue's benchmark),
and the cost of resuming `switchyard batch` after a SIGKILL.

    swift build -c release && python3 benchmarks/make_bench_model.py   # bench-mixtral-800m
    python3 convert_hf_to_gguf.py bench-mixtral-800m --outtype bf16 --outfile bench.gguf   # llama.cpp's script
    python3 benchmarks/batch_bench.py --model bench-mixtral-800m --gguf bench.gguf \\
        --llama-server path/to/llama-server [-t 2] [--requests 500] [--max-tokens 48] [--parallel 4,8,16]

The requests: chat completions of mixed length (8 to 160 words, seeded), greedy, a fixed max_tokens
and ignore_eos, so both engines generate the same number of tokens. Times are end to end from the
first request to the last result, model loading excluded on both sides (`switchyard batch`'s own
summary; the client's clock for llama-server). Prompt tokens differ a little: llama.cpp's GGUF
tokenizer splits some words differently. Prints a Markdown table.

bench-mixtral-800m's tokenizer has 4,096 entries and its embedding 32,000 rows; llama.cpp wants them
equal, so convert a copy whose tokenizer.json has the vocabulary padded with unused entries
(`--pad-vocab DIR` writes one: config and weights linked, tokenizer padded).
"""
import argparse
import concurrent.futures
import json
import os
import random
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KV_CACHE_SIZE = None
PRECISION = None
WORDS = ("the old lighthouse keeper climbed winding stairs every evening to light lamp for ships at sea while storm "
         "gathered over grey water and gulls cried above harbour where fishermen mended their nets by lantern glow").split()


def requests(n, max_tokens, seed=1):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = rng.randint(8, 160)
        prompt = " ".join(rng.choice(WORDS) for _ in range(words))
        lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                               "temperature": 0, "ignore_eos": True}})
    return lines


def switchyard_batch(binary, model, inp, out, threads, context, sequences, kill_after=None):
    """Runs `switchyard batch`; returns (its own seconds, prompt and completion tokens, stderr), or kills it once
    `kill_after` results are on the disk."""
    args = [binary, "batch", "--model", model, "--input", inp, "--output", out, "-t", str(threads), "--context-length", str(context)]
    if sequences:
        args += ["--max-sequences", str(sequences)]
    if KV_CACHE_SIZE:
        args += ["--kv-cache-size", KV_CACHE_SIZE]
    if PRECISION:
        args += ["--precision", PRECISION]
    launched = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        while p.poll() is None and (not os.path.exists(out) or open(out, "rb").read().count(b"\n") < kill_after):
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        return time.perf_counter() - launched, None, None, ""
    err = p.communicate()[1]
    if p.returncode != 0:
        raise SystemExit(f"switchyard batch failed: {err[-800:]}")
    m = re.search(r"(\d+) prompt and (\d+) generated tokens in ([\d.]+) s", err)
    return float(m.group(3)), int(m.group(1)), int(m.group(2)), err + f"\nwall {time.perf_counter() - launched:.1f} s"


def llama_server(binary, gguf, lines, threads, context, parallel):
    port = 18000 + parallel
    server = subprocess.Popen([binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-c", str(context * parallel),
                               "--parallel", str(parallel), "--port", str(port), "--jinja", "--no-webui"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"llama-server exited ({server.returncode}); run it by hand to see why")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                    break
            except Exception:
                time.sleep(0.5)

        def post(line):
            body = json.dumps(line["body"]).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            reply = json.loads(urllib.request.urlopen(request, timeout=3600).read())
            return reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"]

        post({"body": dict(lines[0]["body"], max_tokens=4)})  # warm-up
        started = time.perf_counter()
        # Twice as many clients as slots, so a slot never waits for a client to send.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2 * parallel) as pool:
            usage = list(pool.map(post, lines))
        return time.perf_counter() - started, sum(u[0] for u in usage), sum(u[1] for u in usage)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.path.join(ROOT, "bench-mixtral-800m"))
    parser.add_argument("--gguf")
    parser.add_argument("--llama-server")
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "switchyard"))
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--context", type=int, default=512, help="context per sequence, both engines")
    parser.add_argument("--max-sequences", type=int, help="switchyard batch's (default: what the KV budget holds)")
    parser.add_argument("--parallel", default="4,8,16", help="llama-server --parallel values to try")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--kv-cache-size", help="switchyard batch's KV memory (default 1GiB)")
    parser.add_argument("--precision", help="switchyard batch's activation precision (bf16: as llama.cpp's BF16 path)")
    parser.add_argument("--pad-vocab", metavar="DIR", help="write a copy of --model for convert_hf_to_gguf.py, then stop")
    args = parser.parse_args()
    global KV_CACHE_SIZE, PRECISION
    KV_CACHE_SIZE, PRECISION = args.kv_cache_size, args.precision
    if args.pad_vocab:
        os.makedirs(args.pad_vocab, exist_ok=True)
        for name in os.listdir(args.model):
            if name != "tokenizer.json" and not os.path.exists(os.path.join(args.pad_vocab, name)):
                os.symlink(os.path.abspath(os.path.join(args.model, name)), os.path.join(args.pad_vocab, name))
        tokenizer = json.load(open(os.path.join(args.model, "tokenizer.json")))
        vocab = tokenizer["model"]["vocab"]
        rows = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
        for i in range(len(vocab), rows):
            vocab[f"<unused{i}>"] = i
        json.dump(tokenizer, open(os.path.join(args.pad_vocab, "tokenizer.json"), "w"))
        return
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = requests(args.requests, args.max_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        inp = f"{d}/in.jsonl"
        with open(inp, "w") as f:
            f.writelines(json.dumps(l) + "\n" for l in lines)
        seconds, prompt, tokens, err = switchyard_batch(args.binary, args.model, inp, f"{d}/out.jsonl", args.threads, args.context, args.max_sequences)
        sequences = re.search(r"up to (\d+) sequences", err).group(1)
        whole = float(re.search(r"wall ([\d.]+) s", err).group(1))
        rows.append((f"switchyard batch (up to {sequences} sequences{', ' + args.precision if args.precision else ''})", seconds, prompt, tokens))
        print(f"switchyard batch: {seconds:.1f} s, {tokens} generated tokens", flush=True)
        if args.llama_server and args.gguf:
            for n in [int(x) for x in args.parallel.split(",")]:
                seconds_l, prompt_l, tokens_l = llama_server(args.llama_server, args.gguf, lines, args.threads, args.context, n)
                rows.append((f"llama-server --parallel {n}", seconds_l, prompt_l, tokens_l))
                print(f"llama-server --parallel {n}: {seconds_l:.1f} s, {tokens_l} generated tokens", flush=True)
        if not args.skip_resume:
            # Resume: kill at half way, rerun; the rerun redoes only what was in flight.
            out = f"{d}/resume.jsonl"
            killed, _, _, _ = switchyard_batch(args.binary, args.model, inp, out, args.threads, args.context, args.max_sequences,
                                               kill_after=args.requests // 2)
            on_disk = open(out, "rb").read().count(b"\n")
            rerun, _, rerun_tokens, err = switchyard_batch(args.binary, args.model, inp, out, args.threads, args.context, args.max_sequences)
            ran = int(re.search(r"(\d+) to run", err).group(1))
            again = float(re.search(r"wall ([\d.]+) s", err).group(1))
            print(f"resume: SIGKILL after {killed:.1f} s with {on_disk} results on disk; the rerun ran {ran} requests "
                  f"({args.requests - on_disk} unfinished) in {again:.1f} s ({rerun:.1f} s of requests), {rerun_tokens} generated tokens; "
                  f"killed run + rerun {killed + again:.1f} s against {whole:.1f} s uninterrupted (process wall times, model loads included): "
                  f"{killed + again - whole:+.1f} s", flush=True)
    print(f"\nCPU: {cpu}; {args.requests} chat requests, {args.max_tokens} new tokens each (ignore_eos), {args.threads} threads\n")
    print("| engine | seconds | prompt tokens | generated tokens | generated tok/s | Switchyard's speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seconds, prompt, tokens in rows:
        print(f"| {name} | {seconds:.1f} | {prompt} | {tokens} | {tokens / seconds:.1f} | {seconds / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
