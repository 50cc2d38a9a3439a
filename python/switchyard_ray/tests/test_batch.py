"""A batch job over a local three-node Ray cluster (inside a network namespace with only
loopback): two shards on the two nodes that offer {"batch_host": 1}; one shard's `switchyard
batch` process SIGKILLed mid-job; Ray restarts its actor and retries the shard, which resumes;
the merged output has one result per request, none twice, equal to a single-process run's."""
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import BIN, MODEL, skip_reason
from switchyard_ray.batch import run_batch

EXTRA = ["--threads", "1", "--precision", "f32", "--max-sequences", "8", "--context-length", "256"]


@pytest.fixture(scope="module")
def cluster():
    if skip_reason():
        pytest.skip(skip_reason())
    c = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 1})
    for _ in range(2):
        c.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources={"batch_host": 1})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def texts(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        c = r["response"]["body"]["choices"][0]
        out[r["custom_id"]] = c.get("text") or c["message"]["content"]
    return out


def test_batch_over_ray_survives_a_killed_shard(cluster, tmp_path):
    n = 48
    inp = tmp_path / "in.jsonl"
    with open(inp, "w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/completions",
                                "body": {"prompt": "And God said " * (1 + i % 3), "max_tokens": 8 + i % 4, "temperature": 0}}) + "\n")
    ref = tmp_path / "ref.jsonl"
    r = subprocess.run([BIN, "batch", "--model", MODEL, "--input", str(inp), "--output", str(ref), *EXTRA], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    killed = []
    finished = threading.Event()

    def killer():
        # The first shard's switchyard process, once it has written some results.
        deadline = time.monotonic() + 120
        target = tmp_path / "job" / "shard-000.results.jsonl"
        while time.monotonic() < deadline and not killed and not finished.is_set():
            if target.exists() and target.stat().st_size > 0:
                out = subprocess.run(["pgrep", "-f", "--", f"--input {tmp_path}/job/shard-000.jsonl"], capture_output=True, text=True).stdout.split()
                for pid in out:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    out = tmp_path / "out.jsonl"
    try:
        summary = run_batch(BIN, MODEL, str(inp), str(out), shards=2, workdir=str(tmp_path / "job"), extra=EXTRA)
    finally:
        finished.set()
        t.join()
    assert killed, "a shard's process was killed mid-job"
    assert summary["results"] == n and summary["errors"] == 0
    nodes = {s["node_id"] for s in summary["shards"]}
    assert len(nodes) == 2, f"the shards ran on two nodes: {summary['shards']}"
    ids = [json.loads(l)["custom_id"] for l in open(out)]
    assert len(ids) == n and len(set(ids)) == n
    assert texts(out) == texts(ref)
