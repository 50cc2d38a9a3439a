#!/usr/bin/env python3
"""What `serve` pays for holding its weights in memory (the default) instead of computing from the
files' mappings (--mmap): time from start to listening, resident memory after load and after three
requests, and greedy decode speed of one 64-token completion (best of three, prompt included).

    swift build -c release && python3 benchmarks/make_bench_model.py
    python3 benchmarks/serve_residency.py [--model bench-mixtral-800m] [-t 2] [--rounds 2]

As root, the page cache is dropped before each start, so both modes read the file from the drive.
"""
import argparse
import json
import os
import re
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // 1024


def measure(binary, model, threads, extra):
    started = time.time()
    server = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "-t", str(threads)] + extra,
                              stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in server.stderr:
            found = re.search(r":(\d+)/v1", line)
            if found:
                port = int(found.group(1))
                break
        if port is None:
            raise SystemExit(f"the server did not start ({' '.join(extra) or 'default'})")
        load = time.time() - started
        loaded = rss_mib(server.pid)
        body = json.dumps({"model": "m", "prompt": "And it came to pass", "max_tokens": 64,
                           "temperature": 0, "ignore_eos": True}).encode()
        best = 0.0
        for _ in range(3):
            t = time.time()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                             {"Content-Type": "application/json"})
            reply = json.load(urllib.request.urlopen(request, timeout=600))
            best = max(best, reply["usage"]["completion_tokens"] / (time.time() - t))
        return load, loaded, rss_mib(server.pid), best
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.path.join(ROOT, "bench-mixtral-800m"))
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "switchyard"))
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("| mode | load to listening | RSS after load | RSS after 3 requests | decode, 64 tokens |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for _ in range(args.rounds):
        for extra in ([], ["--mmap"]):
            if os.geteuid() == 0:
                subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], stderr=subprocess.DEVNULL)
            load, loaded, after, speed = measure(args.binary, args.model, args.threads, extra)
            print(f"| {'--mmap' if extra else 'copied (default)'} | {load:.2f} s | {loaded} MiB | {after} MiB | {speed:.1f} tok/s |",
                  flush=True)


if __name__ == "__main__":
    main()
