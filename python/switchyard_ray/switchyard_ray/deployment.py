"""The actors and the supervisor of a two-tier deployment."""
import os
import tempfile
import threading
import time

import ray

from .process import SwitchyardProcess


def node_ip():
    return ray.util.get_node_ip_address()


class _WorkerProcess:
    """What a worker actor answers about its process: its address, its line and node, its pid."""

    def address(self):
        return self.process.address

    def info(self):
        return {**self.process.info, "node_id": ray.get_runtime_context().get_node_id()}

    def pid(self):
        return self.process.pid


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0, resources={"attention_host": 1})
class AttentionWorkerActor(_WorkerProcess):
    """One `switchyard attention-worker` on a node that offers {"attention_host": 1}."""

    def __init__(self, binary, kv_memory, threads=None, host=None, extra=()):
        args = [binary, "attention-worker", "--listen", f"{host or node_ip()}:0", "--kv-memory", kv_memory, *extra]
        if threads:
            args += ["--threads", str(threads)]
        self.process = SwitchyardProcess(args)


@ray.remote(max_restarts=0, num_cpus=0, resources={"expert_host": 1})
class ExpertWorkerActor(_WorkerProcess):
    """One `switchyard expert-worker` on a node that offers {"expert_host": 1}: routed experts in its
    memory, read from its own copy of the model. Not restarted: tier 1 places experts once, and
    the experts of a host it loses run on tier 1's own tiers from then on."""

    def __init__(self, binary, model, experts=None, memory=None, threads=None, host=None):
        args = [binary, "expert-worker", "--listen", f"{host or node_ip()}:0", "--model", model]
        if experts:
            args += ["--experts", experts]
        if memory:
            args += ["--memory", memory]
        if threads:
            args += ["--threads", str(threads)]
        self.process = SwitchyardProcess(args)


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class TierOneActor:
    """Tier 1: `switchyard serve` over the attention workers, whose list it reads from a file that
    `set_workers` rewrites; the server takes the new list up without a restart."""

    def __init__(self, binary, model, workers, host="127.0.0.1", extra=()):
        self.list_path = os.path.join(tempfile.mkdtemp(prefix="switchyard-ray-"), "attention-workers")
        args = [binary, "serve", "--model", model, "--host", host, "--port", "0", *extra]
        if workers:
            self._write(workers)
            args += ["--attention-workers-file", self.list_path]
        self.process = SwitchyardProcess(args)
        self.workers = list(workers)

    def _write(self, workers):
        tmp = self.list_path + ".new"
        with open(tmp, "w") as f:
            f.write("\n".join(workers) + "\n")
        os.replace(tmp, self.list_path)

    def set_workers(self, workers):
        if list(workers) != self.workers:
            self._write(workers)
            self.workers = list(workers)
        return True

    def url(self):
        return self.process.address

    def log(self):
        return self.process.stderr_tail


class TwoTier:
    """Attention workers placed by the custom resource `attention_host` and expert hosts by
    `expert_host`, tier 1 serving over them, and a supervisor thread that hands tier 1 the attention
    workers' addresses whenever Ray restarts one.

    expert_hosts: how many expert hosts; expert_sets: per host, its `--experts` (None: what tier 1
    assigns)."""

    def __init__(self, binary, model, workers=2, kv_memory="1GiB", worker_threads=1, tier1_args=(), worker_host=None,
                 tier1_resources=None, poll_seconds=0.5, expert_hosts=0, expert_sets=None, expert_memory=None):
        self.binary, self.model = binary, model
        self.count, self.kv_memory, self.worker_threads = workers, kv_memory, worker_threads
        self.tier1_args, self.worker_host = list(tier1_args), worker_host
        self.tier1_resources = tier1_resources or {}
        self.poll_seconds = poll_seconds
        self.expert_count, self.expert_sets, self.expert_memory = expert_hosts, expert_sets or [None] * expert_hosts, expert_memory
        self.workers, self.experts, self.tier1 = [], [], None
        self.addresses, self.expert_addresses = [], []
        self.changes = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self, timeout=120):
        self.workers = [AttentionWorkerActor.remote(self.binary, self.kv_memory, self.worker_threads, self.worker_host)
                        for _ in range(self.count)]
        self.addresses = ray.get([w.address.remote() for w in self.workers], timeout=timeout)
        self.experts = [ExpertWorkerActor.remote(self.binary, self.model, self.expert_sets[i], self.expert_memory, self.worker_threads,
                                                 self.worker_host) for i in range(self.expert_count)]
        self.expert_addresses = ray.get([e.address.remote() for e in self.experts], timeout=timeout)
        options = {"resources": self.tier1_resources} if self.tier1_resources else {}
        extra = list(self.tier1_args) + (["--expert-workers", ",".join(self.expert_addresses)] if self.expert_addresses else [])
        self.tier1 = TierOneActor.options(**options).remote(self.binary, self.model, self.addresses, extra=extra)
        ray.get(self.tier1.url.remote(), timeout=timeout)
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

    def _supervise(self):
        while self.workers and not self._stop.wait(self.poll_seconds):
            current = []
            for i, w in enumerate(self.workers):
                try:
                    # A restarting actor answers once its new process listens.
                    current.append(ray.get(w.address.remote(), timeout=60))
                except Exception:
                    current.append(self.addresses[i] if i < len(self.addresses) else None)
            current = [a for a in current if a]
            if current != self.addresses:
                try:
                    ray.get(self.tier1.set_workers.remote(current), timeout=30)
                    self.addresses = current
                    self.changes += 1
                except Exception:
                    pass

    def url(self):
        return ray.get(self.tier1.url.remote())

    def worker_pids(self):
        return ray.get([w.pid.remote() for w in self.workers])

    def expert_pids(self):
        return ray.get([e.pid.remote() for e in self.experts])

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for a in self.workers + self.experts + ([self.tier1] if self.tier1 else []):
            ray.kill(a, no_restart=True)
