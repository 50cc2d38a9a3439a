#!/usr/bin/env python3
"""Aggregate decode speed through the HTTP API with 1, 4 and 8 concurrent streaming clients, and
time to first token under load (the server issue's benchmark).

    swift build -c release && python3 benchmarks/make_bench_model.py
    pip install openai && python3 benchmarks/server_bench.py [--model bench-mixtral-800m] [-t 2]

Each client streams one completion of a ~32-token prompt and 64 new tokens (greedy). Two rates:
- end to end: all completion tokens over the wall time from the first request to the last token
  (prompts, ramp-up and ramp-down included);
- steady decode: text chunks (one per token, but for the rare token that completes no character)
  that arrive while every client is generating (from the last client's first token to the first
  client's last token), over that window: the rate llama-batched-bench reports for N parallel
  sequences (its S_TG, prompt processing excluded).
"""
import argparse
import os
import re
import statistics
import subprocess
import threading
import time

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.path.join(ROOT, "bench-mixtral-800m"))
    parser.add_argument("-t", "--threads", default="2")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    binary = os.path.join(ROOT, ".build", "release", "switchyard")
    server = subprocess.Popen([binary, "serve", "--model", args.model, "--port", "0", "-t", args.threads,
                               "--max-sequences", "8", "--context-length", "512"], stderr=subprocess.PIPE, text=True)
    port = None
    while port is None:
        line = server.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if m:
            port = int(m.group(1))
        elif not line and server.poll() is not None:
            raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    name = client.models.list().data[0].id
    prompt = "The old lighthouse keeper climbed the winding stairs every evening to light the lamp for ships at sea"
    # Warm-up.
    client.completions.create(model=name, prompt=prompt, max_tokens=8, temperature=0)
    print(f"| concurrent clients | end to end tok/s | steady decode tok/s | time to first token, mean (p90) s |")
    print("| ---: | ---: | ---: | ---: |")
    for clients in (1, 4, 8):
        first_token = [None] * clients
        tokens = [0] * clients
        arrivals = [[] for _ in range(clients)]
        start = time.perf_counter()

        def run(i):
            t0 = time.perf_counter()
            for chunk in client.completions.create(model=name, prompt=f"{prompt} ({i})", max_tokens=args.tokens, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].text:
                    arrivals[i].append(time.perf_counter())
                    if first_token[i] is None:
                        first_token[i] = time.perf_counter() - t0
                if chunk.usage:
                    tokens[i] = chunk.usage.completion_tokens
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        ttft = sorted(x for x in first_token if x is not None)
        p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]
        begin = max(a[0] for a in arrivals)
        end = min(a[-1] for a in arrivals)
        inside = sum(1 for a in arrivals for x in a if begin < x <= end)
        steady = f"{inside / (end - begin):.1f}" if end > begin else "n/a"
        print(f"| {clients} | {sum(tokens) / elapsed:.1f} | {steady} | {statistics.mean(ttft):.2f} ({p90:.2f}) |", flush=True)
    server.terminate()
    server.wait(timeout=60)


if __name__ == "__main__":
    main()
