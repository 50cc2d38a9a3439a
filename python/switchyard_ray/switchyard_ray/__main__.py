"""Run a two-tier deployment on Ray.

    python3 -m switchyard_ray --binary .build/release/switchyard [--model DIR] [--workers 2] \
        [--kv-memory 1GiB] [--expert-hosts N [--experts SPEC]...] (--local | --address RAY_ADDRESS) \
        [--prompt TEXT] [--serve-seconds N]

--local starts a Ray cluster on this machine (a head with {"main_host": 1} and as many nodes as
--workers or --expert-hosts ask for, each offering {"attention_host": 1, "expert_host": 1}); run it
inside a network namespace with only loopback, or Ray moves off 127.0.0.1. With --address, the
cluster's nodes must offer those resources (`ray start --resources '{"attention_host": 1}'` on each
attention host, '{"expert_host": 1}' on each expert host). Prints tier 1's URL; with --prompt, one
greedy completion through it; then serves for --serve-seconds (0: exit).
"""
import argparse
import json
import os
import sys
import time
import urllib.request

import ray

from .deployment import TwoTier


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    p = argparse.ArgumentParser(prog="python3 -m switchyard_ray")
    p.add_argument("--binary", required=True)
    p.add_argument("--model", default=os.path.join(root, "models/switchyard-kjv-moe"))
    p.add_argument("--workers", type=int, default=2, help="attention workers (nodes with {\"attention_host\": 1})")
    p.add_argument("--expert-hosts", type=int, default=0, help="expert hosts (nodes with {\"expert_host\": 1})")
    p.add_argument("--experts", action="append", help="an expert host's --experts, once per host (default: what tier 1 assigns)")
    p.add_argument("--kv-memory", default="1GiB")
    p.add_argument("--local", action="store_true")
    p.add_argument("--address")
    p.add_argument("--prompt")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--serve-seconds", type=float, default=0)
    p.add_argument("--batch-input", help="run this batch file over the cluster instead (nodes with {\"batch_host\": 1})")
    p.add_argument("--batch-output")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--workdir", help="where shards and their results go: a path every node sees")
    a = p.parse_args()
    if not 0 <= a.workers <= 64 or not 0 <= a.expert_hosts <= 64:
        sys.exit("error: --workers and --expert-hosts must be between 0 and 64")
    if a.experts and len(a.experts) != a.expert_hosts:
        sys.exit("error: give --experts once per expert host, or not at all")
    if a.local == bool(a.address):
        sys.exit("error: give --local or --address")
    cluster = None
    if a.local:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 1,
                                                                  "resources": {"main_host": 1}})
        for _ in range(max(a.workers, a.expert_hosts, 1)):
            cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources={"attention_host": 1, "expert_host": 1, "batch_host": 1})
        ray.init(address=cluster.address)
    else:
        ray.init(address=a.address)
    if a.batch_input:
        from .batch import run_batch

        if not a.batch_output or not 1 <= a.shards <= 4096:
            sys.exit("error: --batch-input needs --batch-output, and --shards between 1 and 4096")
        try:
            summary = run_batch(os.path.abspath(a.binary), os.path.abspath(a.model), a.batch_input, a.batch_output, shards=a.shards,
                                workdir=a.workdir)
            print(f"batch: {summary['results']} results in {a.batch_output}, {summary['errors']} errors", flush=True)
        finally:
            ray.shutdown()
            if cluster:
                cluster.shutdown()
        return
    deployment = TwoTier(os.path.abspath(a.binary), os.path.abspath(a.model), workers=a.workers, kv_memory=a.kv_memory,
                         tier1_resources={"main_host": 1}, expert_hosts=a.expert_hosts, expert_sets=a.experts).start()
    try:
        url = deployment.url()
        print(f"tier 1: {url}/v1 over attention workers {','.join(deployment.addresses) or 'none'}, "
              f"expert hosts {','.join(deployment.expert_addresses) or 'none'}", flush=True)
        if a.prompt:
            body = json.dumps({"model": "m", "prompt": a.prompt, "max_tokens": a.max_tokens, "temperature": 0}).encode()
            req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                print(a.prompt + json.loads(r.read())["choices"][0]["text"], flush=True)
        time.sleep(a.serve_seconds)
    finally:
        deployment.stop()
        ray.shutdown()
        if cluster:
            cluster.shutdown()


if __name__ == "__main__":
    main()
