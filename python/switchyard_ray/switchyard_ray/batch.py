"""Offline batch jobs over a Ray cluster: the input file is split into shards, each shard runs
through `switchyard batch` in an actor on a node that offers {"batch_host": 1}, and the shards'
results are merged into one output file.

Nothing is lost or done twice: a shard's results are appended and synced as they finish in a
file every node sees (`workdir`); when a node or its process dies, Ray restarts the actor and
retries the shard, and `switchyard batch` resumes from that shard's results file. Only file
paths pass through Ray; the requests and results stay on disk.

    from switchyard_ray.batch import run_batch
    summary = run_batch(binary, model, "requests.jsonl", "results.jsonl", shards=2, workdir="/shared/job")
"""
import json
import os
import subprocess

import ray
from ray.util import ActorPool


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0, resources={"batch_host": 1})
class BatchShardActor:
    """Runs `switchyard batch` on one shard at a time."""

    def run(self, binary, model, shard, output, errors, extra):
        args = [binary, "batch", "--model", model, "--input", shard, "--output", output, "--errors", errors, *extra]
        # Its own stdin pipe, never a new session: it goes with the actor.
        p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = p.communicate()
        if p.returncode < 0:
            # Killed (a node going down, an OOM kill): end the actor with a failure so that Ray
            # restarts it and retries this shard, which then resumes from its results file.
            os._exit(1)
        if p.returncode != 0:
            raise RuntimeError(f"switchyard batch on {shard} failed ({p.returncode}): {err[-2000:]}")
        return {"shard": shard, "node_id": ray.get_runtime_context().get_node_id(), "log": err.splitlines()[-1:]}


def split(input_path, workdir, shards):
    """Shard files of the input, lines dealt round-robin; blank lines dropped. Returns their paths."""
    os.makedirs(workdir, exist_ok=True)
    paths = [os.path.join(workdir, f"shard-{i:03d}.jsonl") for i in range(shards)]
    if all(os.path.exists(p) for p in paths):
        return paths  # a rerun of the same job keeps its shards (and so its results)
    lines = [l for l in open(input_path, encoding="utf-8").read().split("\n") if l.strip()]
    for i, p in enumerate(paths):
        tmp = p + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines[i::shards]:
                f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    return paths


def merge(shard_outputs, output):
    """One output file from the shards' results, each custom_id once."""
    seen = set()
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for path in shard_outputs:
            if not os.path.exists(path):
                continue
            for line in open(path, encoding="utf-8"):
                if not line.strip():
                    continue
                cid = json.loads(line)["custom_id"]
                if cid in seen:
                    raise RuntimeError(f"custom_id {cid!r} appears twice across shards")
                seen.add(cid)
                out.write(line if line.endswith("\n") else line + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, output)
    return seen


def run_batch(binary, model, input_path, output, shards=2, workdir=None, errors=None, extra=(), actors=None):
    """Runs the job; returns {"results", "errors", "shards": [...]} once every shard is done."""
    workdir = workdir or output + ".shards"
    errors = errors or (output[:-6] if output.endswith(".jsonl") else output) + ".errors.jsonl"
    paths = split(input_path, workdir, shards)
    pool = ActorPool([BatchShardActor.remote() for _ in range(actors or shards)])
    jobs = [(p, p[:-6] + ".results.jsonl", p[:-6] + ".errors.jsonl") for p in paths]
    reports = list(pool.map(lambda a, j: a.run.remote(binary, model, j[0], j[1], j[2], list(extra)), jobs))
    ok = merge([j[1] for j in jobs], output)
    bad = merge([j[2] for j in jobs], errors)
    return {"results": len(ok), "errors": len(bad), "shards": reports}
