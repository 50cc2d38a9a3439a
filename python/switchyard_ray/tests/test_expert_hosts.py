"""Expert hosts on a local three-node Ray cluster (inside a network namespace with only loopback):
two `switchyard expert-worker` processes placed on the two nodes that offer {"expert_host": 1}, one
holding its own experts and one what tier 1 assigns, tier 1 serving over them; every completion
equals a one-machine server's, also while one host's process is SIGKILLed mid-run (its experts
then run on tier 1)."""
import os
import signal
import threading
import time

import pytest
import ray

from conftest import BIN, MODEL, local_cluster, skip_reason
from switchyard_ray import TwoTier
from test_two_tier import PROMPTS, SERVE_ARGS, complete, reference  # noqa: F401  (the one-machine completions)


@pytest.fixture(scope="module")
def cluster():
    if skip_reason():
        pytest.skip(skip_reason())
    yield from local_cluster({"expert_host": 1})


def test_expert_hosts_survive_one_killed(cluster, reference):
    d = TwoTier(BIN, MODEL, workers=0, tier1_args=SERVE_ARGS, tier1_resources={"main_host": 1}, expert_hosts=2,
                expert_sets=["*:0-1", None]).start()
    try:
        url = d.url()
        infos = ray.get([e.info.remote() for e in d.experts])
        head = ray.get_runtime_context().get_node_id()
        nodes = {i["node_id"] for i in infos}
        assert len(nodes) == 2 and head not in nodes, f"expert hosts on two expert nodes, not the head: {infos}"
        assert {p: complete(url, p) for p in PROMPTS} == reference

        results = {}

        def run(prompt):
            results[prompt] = complete(url, prompt, tokens=48)

        long_reference = {p: complete(url, p, tokens=48) for p in PROMPTS}
        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        time.sleep(0.3)
        os.kill(d.expert_pids()[1], signal.SIGKILL)
        for t in threads:
            t.join(timeout=120)
        assert results == long_reference, "completions in flight while a host was killed are unchanged"
        assert {p: complete(url, p) for p in PROMPTS} == reference
        log = ray.get(d.tier1.log.remote())
        assert any("lost" in line for line in log), f"tier 1 reports the lost host: {log[-6:]}"
    finally:
        d.stop()
