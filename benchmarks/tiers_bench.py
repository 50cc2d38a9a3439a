#!/usr/bin/env python3
"""Tiered execution benchmarks (the orchestration issue's):

1. RAM budget: bench-mixtral-800m with --ram-budget at 50% and 25% of the model's size, the
   scheduled policy (expert cache, prefetch, parallel reads) against the naive one (fixed
   placement, each missing expert read when needed, no cache, no prefetch): decode tok/s, peak
   resident memory against the budget, disk bytes read per token, cache and prediction hit rates.
2. Emulated accelerator with --accelerator-memory 30% of the model: the scheduler against always-run-on-
   CPU and always-copy, prompt and decode tok/s, predicted against measured expert time.

    swift build -c release && python3 benchmarks/make_bench_model.py
    python3 benchmarks/tiers_bench.py [--model bench-mixtral-800m] [-t 2] [--repeats 2]

The accelerator runs use a ~300-token prompt, so prefill has experts with many tokens (where a
copy pays) and decode has one (where it does not).

Configurations alternate within each repeat so a drive whose speed drifts (cloud volumes do)
affects all alike; the table gives the mean of the repeats. Each run also reports the drive's
read rate measured by the cost model (O_DIRECT, one stream).
"""
import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, ".build", "release", "switchyard")
PROMPT = ("In the beginning the engine read every weight from memory, and every token paid for the "
          "whole model; then the experts were split across tiers and the fast ones were kept close.")
# About 300 tokens, so that prefill gives the accelerator experts with many tokens each.
LONG_PROMPT = " ".join([PROMPT] * 8)


def model_bytes(model):
    total = 0
    for name in os.listdir(model):
        if name.endswith(".safetensors"):
            total += os.path.getsize(os.path.join(model, name))
    return total


def run(model, threads, tokens, extra, prompt=PROMPT):
    command = [BINARY, "generate", "--model", model, "--prompt", prompt, "--max-tokens", str(tokens),
               "--temperature", "0", "--ignore-eos", "--json", "-t", threads] + extra
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(results):
    first = results[0]
    tiers = first["tiers"]
    s = [r["tiers"]["statistics"] for r in results]
    mean = lambda f: statistics.mean(f(r) for r in results)
    return {
        "decode": mean(lambda r: r["tokens_per_second"]),
        "decode_sd": statistics.pstdev([r["tokens_per_second"] for r in results]),
        "prefill": mean(lambda r: r["prompt_tokens_per_second"]),
        "peak_mb": max(r["peak_resident_bytes"] for r in results) / 1e6,
        "disk_mb_per_token": statistics.mean(x["disk_bytes_read"] / x["tokens"] for x in s) / 1e6,
        "copied_mb_per_token": statistics.mean(x["bytes_copied_to_accelerator"] / x["tokens"] for x in s) / 1e6,
        "cache_hit": statistics.mean(x["cache_hit_rate"] for x in s),
        "prediction_hit": statistics.mean(x["prediction_hit_rate"] for x in s),
        "prefetch": f"{sum(x['prefetch_used'] for x in s)}/{sum(x['prefetch_loads'] for x in s)}",
        "predicted_s": statistics.mean(x["predicted_expert_seconds"] for x in s),
        "measured_s": statistics.mean(x["measured_expert_seconds"] for x in s),
        "predicted_warm_s": statistics.mean(x["predicted_expert_seconds_after_warm_up"] for x in s),
        "measured_warm_s": statistics.mean(x["measured_expert_seconds_after_warm_up"] for x in s),
        "cpu_runs": statistics.mean(x["cpu_expert_runs"] for x in s),
        "accelerator_runs": statistics.mean(x["accelerator_expert_runs"] for x in s),
        "placement": tiers["placement"],
        "disk_rate": tiers["costs"]["disk_bytes_per_second"] / 1e9,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.path.join(ROOT, "bench-mixtral-800m"))
    parser.add_argument("-t", "--threads", default="2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", help="a routing profile to pin popular experts with (both policies)")
    parser.add_argument("--accelerator-cpu-threads", default="1",
                        help="CPU kernel threads beside the emulated accelerator's one thread: on a 2-core machine, 1 "
                             "gives each device its own core, as a real GPU would be independent of the CPU")
    parser.add_argument("--skip-ram", action="store_true")
    parser.add_argument("--skip-accelerator", action="store_true")
    args = parser.parse_args()
    size = model_bytes(args.model)
    profile = ["--profile", args.profile] if args.profile else []
    print(f"model {args.model}: {size / 1e6:.0f} MB of safetensors; {args.tokens} new tokens; "
          f"{args.repeats} repeats; threads {args.threads}{'; profile ' + args.profile if args.profile else ''}\n")

    if not args.skip_ram:
        configs = []
        for share in (0.50, 0.25):
            budget = int(size * share)
            for policy in ("scheduled", "naive"):
                configs.append((share, policy, ["--ram-budget", str(budget), "--expert-policy", policy] + profile))
        results = {c[:2]: [] for c in configs}
        for _ in range(args.repeats):
            for share, policy, extra in configs:
                results[(share, policy)].append(run(args.model, args.threads, args.tokens, extra))
        print("| RAM budget | policy | decode tok/s | peak RSS MB (budget) | disk MB/token | cache hit | prediction hit | prefetch used/loaded | pinned/cache slots/disk | drive GB/s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for share in (0.50, 0.25):
            for policy in ("scheduled", "naive"):
                r = summarize(results[(share, policy)])
                p = r["placement"]
                print(f"| {share:.0%} ({size * share / 1e6:.0f} MB) | {policy} | {r['decode']:.2f} ± {r['decode_sd']:.2f} | "
                      f"{r['peak_mb']:.0f} ({size * share / 1e6:.0f}) | {r['disk_mb_per_token']:.0f} | {r['cache_hit']:.2f} | "
                      f"{r['prediction_hit']:.2f} | {r['prefetch']} | {p['ram_pinned_experts']}/{p['ram_cache_slots']}/{p['disk_experts']} | "
                      f"{r['disk_rate']:.2f} |")
            a = summarize(results[(share, "scheduled")])["decode"]
            b = summarize(results[(share, "naive")])["decode"]
            print(f"|  | speedup | {a / b:.2f}x | | | | | | | |")
        print()

    if not args.skip_accelerator:
        budget = int(size * 0.30)
        configs = [(p, ["--accelerator", "emulated", "--accelerator-memory", str(budget), "--accelerator-threads", "1",
                        "--expert-policy", p] + profile)
                   for p in ("scheduled", "cpu", "copy")]
        results = {c[0]: [] for c in configs}
        for _ in range(args.repeats):
            for policy, extra in configs:
                results[policy].append(run(args.model, args.accelerator_cpu_threads, args.tokens, extra, LONG_PROMPT))
        print(f"Emulated accelerator (1 thread), --accelerator-memory {budget / 1e6:.0f} MB (30%), CPU -t {args.accelerator_cpu_threads}:\n")
        print("| policy | prompt tok/s | decode tok/s | expert runs cpu/accelerator | copied MB/token | predicted s | measured s | after warm-up: predicted / measured s | pinned/cache slots |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for policy, _ in configs:
            r = summarize(results[policy])
            p = r["placement"]
            print(f"| {policy} | {r['prefill']:.1f} | {r['decode']:.2f} ± {r['decode_sd']:.2f} | {r['cpu_runs']:.0f}/{r['accelerator_runs']:.0f} | "
                  f"{r['copied_mb_per_token']:.0f} | {r['predicted_s']:.2f} | {r['measured_s']:.2f} | "
                  f"{r['predicted_warm_s']:.2f} / {r['measured_warm_s']:.2f} ({r['predicted_warm_s'] / max(r['measured_warm_s'], 1e-9) - 1:+.0%}) | "
                  f"{p['accelerator_pinned_experts']}/{p['accelerator_cache_slots']} |")


if __name__ == "__main__":
    main()
