"""What the Ray tests share: the binary, the bundled model, and the check that the test runs in a
network namespace with only loopback (Ray leaves 127.0.0.1 otherwise)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("SWITCHYARD_BIN", os.path.join(ROOT, ".build/debug/switchyard"))
MODEL = os.path.join(ROOT, "models/switchyard-kjv-moe")


def only_loopback():
    # /proc/net/dev follows the network namespace (/sys/class/net does not unless remounted).
    with open("/proc/net/dev") as f:
        return [line.split(":")[0].strip() for line in f.readlines()[2:]] == ["lo"]


def skip_reason():
    """Why the cluster tests cannot run here, or None."""
    if not only_loopback():
        return "needs a network namespace with only loopback (Ray leaves 127.0.0.1 otherwise): unshare --net"
    if not os.path.exists(BIN):
        return f"no switchyard binary at {BIN}"
    return None


def local_cluster(resources, nodes=2):
    """A Ray cluster on loopback: a head offering {"main_host": 1} and `nodes` nodes offering
    `resources`, connected; yields it, then shuts it down."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "include_dashboard": False, "num_cpus": 1,
                                                         "resources": {"main_host": 1}})
    for _ in range(nodes):
        c.add_node(node_ip_address="127.0.0.1", num_cpus=1, resources=resources)
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()
