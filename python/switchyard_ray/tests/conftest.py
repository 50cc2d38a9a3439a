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
