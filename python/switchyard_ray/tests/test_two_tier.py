"""Two tiers on a local three-node Ray cluster (run inside a network namespace with only
loopback: Ray would otherwise leave it; see README): attention workers placed on the two nodes
that offer {"attention_host": 1}, tier 1 serving over them; one worker SIGKILLed mid-run, Ray
restarts it, tier 1 is told its new address without a restart and uses it again; every
completion equals a single-tier server's."""
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
import ray

from conftest import BIN, MODEL, local_cluster, skip_reason
from switchyard_ray import TwoTier

PROMPTS = ["In the beginning", "And the LORD said unto Moses", "Blessed are the", "The king of Israel"]
SERVE_ARGS = ["--threads", "1", "--precision", "f32", "--max-sequences", "4", "--context-length", "256"]


def complete(url, prompt, tokens=24):
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": tokens, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["choices"][0]["text"]


def status(address):
    out = subprocess.run([BIN, "attention-status", address, "--timeout", "2"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.fixture(scope="module")
def cluster():
    if skip_reason():
        pytest.skip(skip_reason())
    yield from local_cluster({"attention_host": 1})


@pytest.fixture(scope="module")
def reference():
    """A single-tier server's completions (a real process on loopback)."""
    p = subprocess.Popen([BIN, "serve", "--model", MODEL, "--port", "0", *SERVE_ARGS], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
    url = None
    for line in p.stderr:
        if "serving" in line and " at " in line:
            url = line.split(" at ")[1].split("/v1")[0]
            break
    try:
        return {prompt: complete(url, prompt) for prompt in PROMPTS}
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_two_tier_survives_a_worker_killed_and_restarted(cluster, reference):
    d = TwoTier(BIN, MODEL, workers=2, kv_memory="256MiB", tier1_args=SERVE_ARGS, tier1_resources={"main_host": 1}).start()
    try:
        url = d.url()
        infos = ray.get([w.info.remote() for w in d.workers])
        head = ray.get_runtime_context().get_node_id()
        nodes = {i["node_id"] for i in infos}
        assert len(nodes) == 2 and head not in nodes, f"workers on two attention hosts, not the head: {infos}"

        assert {p: complete(url, p) for p in PROMPTS} == reference

        # Completions in flight while a worker's process is SIGKILLed.
        results = {}

        def run(prompt):
            results[prompt] = complete(url, prompt)

        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        time.sleep(0.3)
        old = list(d.addresses)
        os.kill(d.worker_pids()[0], signal.SIGKILL)
        for t in threads:
            t.join(timeout=120)
        assert results == reference, "completions in flight during the kill equal single-tier's"

        # Ray restarts the actor and its process; the supervisor hands tier 1 the new address.
        deadline = time.monotonic() + 60
        while d.addresses == old and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.addresses != old and d.changes >= 1, "tier 1 was told of the restarted worker"
        new = [a for a in d.addresses if a not in old][0]
        print(f"worker restarted by Ray: {old} -> {d.addresses}; tier 1 log: {ray.get(d.tier1.log.remote())[-4:]}")

        assert {p: complete(url, p) for p in PROMPTS} == reference
        s = status(new)
        assert s is not None and s["connections"] >= 2, f"tier 1 uses the restarted worker again: {s}"
    finally:
        d.stop()
