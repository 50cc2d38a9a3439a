#!/usr/bin/env python3
"""Two-tier inference with real processes over real sockets.

    python3 scripts/two_tier_integration.py [path/to/switchyard] [--no-netns]

On loopback: the bundled model and every fixture give the same tokens (greedy and seeded) through
1, 2 and 3 attention-worker processes as single-tier, and logits within 1e-6 (f32); garbage on
the wire gets error replies and the worker lives on; a worker's exits (stdin closed, SIGTERM,
parent gone, bad flags). Faults: a worker killed with SIGKILL mid-run, behind a delay proxy so
the run lasts; outputs identical, and tier 1 reports the loss and the move.

In network namespaces (root and `ip` needed; else a NOTICE and skip): tier 1 in one, each worker
in its own, joined by veth pairs; 0, 2, 10 and 50 ms of round-trip time added by a delay proxy in
tier 1's namespace; a worker SIGKILLed, and a worker's link set down, mid-run. Outputs identical.
Prints "N passed, N failed"; exits 1 on any failure.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(next((a for a in sys.argv[1:] if not a.startswith("--")), os.path.join(ROOT, ".build/debug/switchyard")))
FIXTURES = ["llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]
results = []
children = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok  ' if condition else 'FAIL'} {name}{'' if condition else ': ' + str(detail)[:2000]}", flush=True)


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def start_worker(kv="64MiB", listen="127.0.0.1:0", ns=None, extra=()):
    """A worker process with a stdin pipe (closing it ends the worker); returns (process, address)."""
    p = subprocess.Popen(ns_prefix(ns) + [BIN, "attention-worker", "--listen", listen, "--kv-memory", kv, "--threads", "1", *extra],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children.append(p)
    line = p.stdout.readline()
    if not line.startswith("SWITCHYARD_LISTENING "):
        raise RuntimeError(f"worker did not start: {line!r} {p.stderr.read() if p.poll() is not None else ''}")
    return p, json.loads(line.split(" ", 1)[1])["address"]


def start_proxy(target, rtt_ms, ns=None):
    p = subprocess.Popen(ns_prefix(ns) + [sys.executable, os.path.join(ROOT, "scripts/delay_proxy.py"), "--target", target, "--rtt-ms", str(rtt_ms)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    children.append(p)
    line = p.stdout.readline()
    return p, line.split()[1]


def run(args, ns=None, timeout=300):
    r = subprocess.run(ns_prefix(ns) + [BIN, *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def generate(model, prompt, workers=None, seed=None, tokens=24, ns=None, extra=()):
    args = ["generate", "--model", model, "--prompt", prompt, "--max-tokens", str(tokens), "--precision", "f32", "--threads", "1", "--json"]
    args += ["--seed", str(seed), "--temperature", "0.8"] if seed is not None else ["--temperature", "0"]
    if workers:
        args += ["--attention-workers", ",".join(workers)]
    return run(args + list(extra), ns=ns)


def tokens_of(stdout):
    """What must not change: the tokens, the text and why generation stopped (not the timings)."""
    try:
        o = json.loads(stdout.strip().splitlines()[-1])
        return o["tokens"], o["text"], o["finish_reason"]
    except (ValueError, IndexError, KeyError):
        return stdout


def status(address, ns=None):
    rc, out, _ = run(["attention-status", address, "--timeout", "2"], ns=ns)
    return json.loads(out) if rc == 0 else None


def identical_tokens():
    workers = [start_worker() for _ in range(3)]
    addresses = [a for _, a in workers]
    models = [("bundled", os.path.join(ROOT, "models/switchyard-kjv-moe"), "And God said")]
    models += [(f, os.path.join(ROOT, "fixtures/models", f), "hello world") for f in FIXTURES]
    for name, path, prompt in models:
        for seed in (None, 5):
            rc, base, err = generate(path, prompt, seed=seed)
            if rc != 0:
                check(f"{name} single-tier runs", False, err)
                continue
            for n in (1, 2, 3):
                rc, out, err = generate(path, prompt, workers=addresses[:n], seed=seed)
                check(f"{name} {'greedy' if seed is None else 'seeded'} through {n} worker(s): same output", rc == 0 and tokens_of(out) == tokens_of(base),
                      f"rc {rc} {err[-400:]}\n{out[-400:]}\nvs\n{base[-400:]}")
    # Logits, f32, every position, within 1e-6 of single-tier.
    try:
        import numpy as np
    except ImportError:
        print("NOTICE: numpy missing; logits not compared")
        return workers
    with tempfile.TemporaryDirectory() as d:
        for f in FIXTURES:
            path = os.path.join(ROOT, "fixtures/models", f)
            toks = "1,5,9,13,17,21,25,29,3,7"
            run(["logits", "--model", path, "--tokens", toks, "--out", f"{d}/a.npy", "--precision", "f32"])
            rc, _, err = run(["logits", "--model", path, "--tokens", toks, "--out", f"{d}/b.npy", "--precision", "f32",
                              "--attention-workers", ",".join(addresses[:2])])
            if rc != 0:
                check(f"{f} logits through 2 workers", False, err)
                continue
            a, b = np.load(f"{d}/a.npy"), np.load(f"{d}/b.npy")
            rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
            check(f"{f} logits through 2 workers within 1e-6 relative ({rel:.1e})", rel <= 1e-6, rel)
    return workers


def frame(kind, rid, payload):
    return struct.pack("<IBQ", 9 + len(payload), kind, rid) + payload


def read_frame(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (length,) = struct.unpack("<I", head)
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return body[0], struct.unpack("<Q", body[1:9])[0], body[9:]


def bad_wire(address):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(frame(1, 1, struct.pack("<IIII", 2, 2, 8, 8)))  # wire version 2
        check("hello answered", read_frame(s)[0] == 0x81)
        s.sendall(frame(5, 2, struct.pack("<IIIIfIIIII", 0, 4, 2, 4, 0.5, 0, 4, 0, 0, 1) + struct.pack("<QI", 12345, 0) + b"\0" * 128))
        kind, rid, payload = read_frame(s)
        check("attend for an unknown sequence: an error reply", kind == 0xFF and rid == 2 and b"not on this worker" in payload, payload)
        s.sendall(frame(2, 3, struct.pack("<I", 4)))
        kind, _, payload = read_frame(s)
        seq = struct.unpack("<Q", payload[:8])[0]
        s.sendall(frame(5, 4, struct.pack("<IIIIfIIIII", 0, 4, 2, 4, 0.5, 0, 4, 0, 0, 1) + struct.pack("<QI", seq, 0) + b"\0" * 100))
        kind, _, payload = read_frame(s)
        check("attend with wrong tensor sizes: an error reply", kind == 0xFF and b"bytes of tensors" in payload, payload)
        s.sendall(frame(0x33, 5, b""))
        check("unknown kind: an error reply", read_frame(s)[0] == 0xFF)
        s.sendall(struct.pack("<I", 0xFFFFFFF0) + b"garbage")
        reply = read_frame(s)
        check("a frame that cannot be delimited: an error, then the connection closes", reply is not None and reply[0] == 0xFF and read_frame(s) is None)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(struct.pack("<I", 100) + b"trunc")  # a truncated frame, then the client goes away
    time.sleep(0.2)
    st = status(address)
    check("the worker lives on after bad input, its connections' sequences freed", st is not None and st["sequences"] == 0, st)


def exits():
    p, _ = start_worker()
    p.stdin.close()
    check("stdin closed: the worker exits 0", p.wait(timeout=10) == 0)
    p, _ = start_worker()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=10)
    check("SIGTERM: the worker exits 0", rc == 0, rc)
    # Its parent goes away: a shell that started it in the background is killed.
    sh = subprocess.Popen(["sh", "-c", f"{BIN} attention-worker --kv-memory 1MiB --threads 1 </dev/null & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    pid = int(sh.stdout.readline())
    time.sleep(0.5)
    sh.kill()
    sh.wait()
    gone = False
    for _ in range(50):
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            gone = True
            break
    check("parent gone: the worker exits", gone)
    rc, _, err = run(["attention-worker", "--kv-memory", "lots"])
    check("a bad --kv-memory: exit 1 with an error line", rc == 1 and err.startswith("error:"), err)
    rc, _, err = run(["attention-worker", "--kv-memory", "1MiB", "--listen", "127.0.0.1:99999"])
    check("a bad --listen: exit 1 with an error line", rc == 1 and "port" in err, err)
    rc, _, err = run(["generate", "--prompt", "x", "--attention-workers", "127.0.0.1:1"])
    check("tier 1 with no worker there: exit 1 naming it", rc == 1 and "127.0.0.1:1" in err, err)


def fault(kill, addresses, ns=None, worker_procs=None, rtt_ms=10, name="", link_down=None):
    """Tier 1 through delay proxies to two workers; `kill` the one holding the sequence mid-run."""
    model = os.path.join(ROOT, "models/switchyard-kjv-moe")
    prompt = "In the beginning God created the heaven and the earth. And the earth was without form"
    rc, base, _ = generate(model, prompt, tokens=48)
    proxies = [start_proxy(a, rtt_ms, ns=ns) for a in addresses]
    via = [a for _, a in proxies]
    args = ns_prefix(ns) + [BIN, "generate", "--model", model, "--prompt", prompt, "--max-tokens", "48", "--precision", "f32", "--threads", "1",
                            "--temperature", "0", "--json", "--attention-workers", ",".join(via), "--attention-timeout", "2"]
    t1 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the worker that holds the sequence as soon as one does (a slow machine takes longer to
    # load); the delay proxies make the decode last seconds after that.
    holder = None
    deadline = time.monotonic() + 60
    while holder is None and t1.poll() is None and time.monotonic() < deadline:
        for i, a in enumerate(addresses):
            st = status(a, ns=ns)
            if st and st["sequences"] > 0:
                holder = i
        time.sleep(0.05)
    time.sleep(0.3)
    if holder is None:
        check(f"{name}: a worker holds the sequence mid-run", False, "none did (the run ended too soon?)")
        t1.kill()
        return
    kill(holder)
    out, err = t1.communicate(timeout=300)
    check(f"{name}: the run finishes with the same tokens", t1.returncode == 0 and tokens_of(out) == tokens_of(base), f"{err[-800:]}\n{out[-300:]}\nvs {base[-300:]}")
    check(f"{name}: tier 1 reports the loss and the move", "lost" in err and "moves to" in err, err[-800:])
    for p, _ in proxies:
        p.kill()


def can_make_namespaces():
    if os.geteuid() != 0 or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        print("NOTICE: not root or no `ip netns`: the network-namespace tests are skipped")
        return False
    return True


class Namespaces:
    """Tier 1's network namespace and one per host, each host joined to tier 1 by a veth pair
    (tier 1 10.<subnet>.i.1, host i 10.<subnet>.i.2), optionally limited to `rate` each way (tc
    tbf: this kernel has no netem). Deleted on exit."""

    def __init__(self, prefix, subnet, hosts=2, rate=None):
        tag = f"{prefix}{os.getpid() % 100000}"
        self.tier1 = f"{tag}t"
        self.hosts = [f"{tag}w{i}" for i in range(1, hosts + 1)]
        self.links = [f"{tag}b{i}" for i in range(1, hosts + 1)]
        self.ips = [f"10.{subnet}.{i}.2" for i in range(1, hosts + 1)]
        self.subnet, self.tag, self.rate = subnet, tag, rate

    def __enter__(self):
        for s in [self.tier1] + self.hosts:
            subprocess.run(["ip", "netns", "add", s], check=True)
            subprocess.run(["ip", "netns", "exec", s, "ip", "link", "set", "lo", "up"], check=True)
        for i, (w, b) in enumerate(zip(self.hosts, self.links), start=1):
            a = f"{self.tag}a{i}"
            subprocess.run(["ip", "link", "add", a, "netns", self.tier1, "type", "veth", "peer", "name", b, "netns", w], check=True)
            for ns, dev, ip in ((self.tier1, a, f"10.{self.subnet}.{i}.1/24"), (w, b, f"10.{self.subnet}.{i}.2/24")):
                subprocess.run(["ip", "netns", "exec", ns, "ip", "addr", "add", ip, "dev", dev], check=True)
                subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"], check=True)
                if self.rate:
                    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
                                    "burst", "256kb", "latency", "100ms"], check=True)
        return self

    def __exit__(self, *exc):
        for s in [self.tier1] + self.hosts:
            subprocess.run(["ip", "netns", "del", s], capture_output=True)


def netns_tests():
    if not can_make_namespaces():
        return
    with Namespaces("sy", 231) as n:
        t1, spaces, ips = n.tier1, [n.tier1] + n.hosts, n.ips
        model = os.path.join(ROOT, "models/switchyard-kjv-moe")
        rc, base, _ = generate(model, "And God said", tokens=16)
        for rtt in (0, 2, 10, 50):
            workers = [start_worker(listen=f"{ip}:0", ns=w) for ip, w in zip(ips, spaces[1:])]
            proxies = [start_proxy(a, rtt, ns=t1) for _, a in workers]
            started = time.monotonic()
            rc, out, err = generate(model, "And God said", workers=[a for _, a in proxies], tokens=16, ns=t1)
            check(f"netns, {rtt} ms added round trip: same tokens ({time.monotonic() - started:.1f} s)", rc == 0 and tokens_of(out) == tokens_of(base), err[-500:])
            for p in [p for p, _ in workers] + [p for p, _ in proxies]:
                p.kill()
        workers = [start_worker(listen=f"{ip}:0", ns=w) for ip, w in zip(ips, spaces[1:])]
        fault(lambda i: workers[i][0].kill(), [a for _, a in workers], ns=t1, name="netns, a worker SIGKILLed mid-run")
        for p, _ in workers:
            p.kill()
        workers = [start_worker(listen=f"{ip}:0", ns=w) for ip, w in zip(ips, spaces[1:])]

        def cut(i):
            subprocess.run(["ip", "netns", "exec", spaces[1 + i], "ip", "link", "set", n.links[i], "down"], check=True)

        fault(cut, [a for _, a in workers], ns=t1, name="netns, a worker's link set down mid-run")
        for p, _ in workers:
            p.kill()


def main():
    if not os.path.exists(BIN):
        sys.exit(f"error: no binary at {BIN}; build first")
    try:
        workers = identical_tokens()
        bad_wire(workers[0][1])
        exits()
        ws = [start_worker() for _ in range(2)]
        fault(lambda i: ws[i][0].kill(), [a for _, a in ws], name="loopback, a worker SIGKILLed mid-run")
        if "--no-netns" not in sys.argv:
            netns_tests()
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
