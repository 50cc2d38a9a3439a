#!/usr/bin/env python3
"""Two-tier throughput: single-tier decode at the batches a tier-1 KV budget of 8 sequences
allows, against two-tier decode with attention workers holding the caches of many more; then
the two-tier curve over added round-trip time (a delay proxy per worker).

    python3 benchmarks/make_bench_model.py              # bench-mixtral-800m (1.58 GB), once
    swift build -c release --product switchyard
    python3 benchmarks/two_tier_bench.py --model bench-mixtral-800m [--workers 2] [--gen 32]

All processes share this machine's cores: tier 1 gets --threads (default 2), each worker 1.
Prints Markdown tables (and one JSON line per measurement with --json).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build/release/switchyard")


def start(args):
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline()


def bench(model, batches, gen, threads, workers=None, reps=1, micro=None):
    args = [BIN, "bench", "--model", model, "-p", "0", "-n", str(gen), "-r", str(reps), "--precision", "f32", "--threads", str(threads),
            "--batch", ",".join(map(str, batches)), "--json"]
    if workers:
        args += ["--attention-workers", ",".join(workers)]
    if micro:
        args += ["--micro-batches", str(micro)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.join(ROOT, "bench-mixtral-800m"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--single", default="1,2,4,8")
    p.add_argument("--two-tier", default="8,16,32,64,128,256")
    p.add_argument("--rtt", default="0,2,10,50")
    p.add_argument("--rtt-batch", type=int, default=256)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    children = []
    try:
        workers = []
        for _ in range(a.workers):
            w, line = start([BIN, "attention-worker", "--kv-memory", "4GiB", "--threads", "1"])
            children.append(w)
            workers.append(json.loads(line.split(" ", 1)[1])["address"])
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
        print(f"CPU: {cpu}, {os.cpu_count()} cores; model {os.path.basename(a.model.rstrip('/'))}; tg{a.gen}, f32, tier 1 --threads {a.threads}, {a.workers} workers of 1 thread\n")
        single = bench(a.model, [int(b) for b in a.single.split(",")], a.gen, a.threads)
        two = bench(a.model, [int(b) for b in a.two_tier.split(",")], a.gen, a.threads, workers=workers)
        best = max(r["tokens_per_second"] for r in single)
        print("| setup | batch | tok/s | vs best single-tier | micro-batches | attention RTT ms | wire bytes/token/layer |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in single:
            b = r["test"].split("@b")[1] if "@b" in r["test"] else "1"
            print(f"| single-tier | {b} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / best:.2f}x | | | |")
        for r in two:
            b = r["test"].split("@b")[1] if "@b" in r["test"] else "1"
            print(f"| two-tier | {b} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / best:.2f}x | {r.get('micro_batches', 1)} | "
                  f"{r.get('attention_round_trip_seconds', 0) * 1e3:.2f} | {r.get('wire_bytes_per_token_per_layer', 0):.0f} |")
        if a.json:
            for r in single + two:
                print(json.dumps(r))
        print()
        print(f"| added RTT ms | batch | tok/s | vs 0 ms | micro-batches | attention RTT ms |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        base = None
        for rtt in [float(x) for x in a.rtt.split(",")]:
            proxies = []
            for w in workers:
                px, line = start([sys.executable, os.path.join(ROOT, "scripts/delay_proxy.py"), "--target", w, "--rtt-ms", str(rtt)])
                children.append(px)
                proxies.append((px, line.split()[1]))
            r = bench(a.model, [a.rtt_batch], a.gen, a.threads, workers=[addr for _, addr in proxies])[0]
            base = base or r["tokens_per_second"]
            print(f"| {rtt:g} | {a.rtt_batch} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / base:.2f} | {r.get('micro_batches', 1)} | "
                  f"{r.get('attention_round_trip_seconds', 0) * 1e3:.2f} |", flush=True)
            if a.json:
                print(json.dumps({"rtt_ms": rtt, **r}))
            for px, _ in proxies:
                px.kill()
    finally:
        for c in children:
            c.kill()


if __name__ == "__main__":
    main()
