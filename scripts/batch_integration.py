#!/usr/bin/env python3
"""`switchyard batch` killed with SIGKILL at random moments, three times, then run to the end:
the results equal an uninterrupted run's (greedy), line for line by custom_id, none missing,
none twice; a torn last line is cut and redone; a rerun of a finished job does nothing.

    python3 scripts/batch_integration.py [path/to/switchyard]
Prints "N passed, N failed"; exits 1 on any failure.
"""
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build/debug/switchyard"))
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok  ' if condition else 'FAIL'} {name}{'' if condition else ': ' + str(detail)[:1500]}", flush=True)


def requests(n):
    words = ["In the beginning", "And God said", "Blessed are the meek", "The LORD is my shepherd", "And it came to pass"]
    lines = []
    for i in range(n):
        prompt = " ".join(words[(i + k) % len(words)] for k in range(1 + i % 4))
        if i % 2:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 6 + i % 7, "temperature": 0}
            lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        else:
            lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/completions",
                          "body": {"prompt": prompt, "max_tokens": 6 + i % 5, "temperature": 0}})
    return lines


def batch(inp, out, wait=True):
    args = [BIN, "batch", "--input", inp, "--output", out, "--threads", "2", "--precision", "f32", "--max-sequences", "16",
            "--context-length", "256"]
    if wait:
        return subprocess.run(args, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def complete_lines(path):
    """Lines ending in a newline (a kill may leave a torn last one)."""
    return open(path, "rb").read().count(b"\n") if os.path.exists(path) else 0


def read(path):
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    parsed = [json.loads(l) for l in lines]
    def what(r):
        body = r["response"]["body"]
        c = body["choices"][0]
        return (c.get("text") or c["message"]["content"], c["finish_reason"], body["usage"]["completion_tokens"])
    return [r["custom_id"] for r in parsed], {r["custom_id"]: what(r) for r in parsed}


def main():
    random.seed(int(os.environ.get("BATCH_TEST_SEED", "7")))
    n = 120
    with tempfile.TemporaryDirectory() as d:
        inp = f"{d}/in.jsonl"
        with open(inp, "w") as f:
            for line in requests(n):
                f.write(json.dumps(line) + "\n")
        started = time.monotonic()
        r = batch(inp, f"{d}/ref.jsonl")
        whole = time.monotonic() - started
        check("uninterrupted run", r.returncode == 0, r.stderr[-800:])
        ids, ref = read(f"{d}/ref.jsonl")
        check(f"uninterrupted: {n} results, one per custom_id ({whole:.1f} s)", len(ids) == n and len(set(ids)) == n, len(ids))

        out = f"{d}/out.jsonl"
        kills = 0
        for k in range(3):
            before = complete_lines(out)
            p = batch(inp, out, wait=False)
            # Kill after a random number of new results (each run does some work, none finishes).
            target = before + random.randint(3, 20)
            while p.poll() is None and complete_lines(out) < target:
                time.sleep(0.01)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait()
            print(f"     kill {k + 1}: {complete_lines(out)} results on disk", flush=True)
        check("three runs SIGKILLed mid-job", kills == 3, kills)
        # A crash mid-write: a torn last line.
        with open(out, "a") as f:
            f.write('{"id": "batch_req_x", "custom_id": "req-')
        r = batch(inp, out)
        check("the rerun finishes and cuts the torn line", r.returncode == 0 and "torn last line" in r.stderr, r.stderr[-800:])
        ids, got = read(out)
        check(f"resumed: {n} results, none missing, none twice", len(ids) == n and set(ids) == set(ref), (len(ids), len(set(ids))))
        diff = [i for i in ref if got.get(i) != ref[i]]
        check("resumed results equal the uninterrupted run's, by custom_id", not diff, [(i, got.get(i), ref[i]) for i in diff[:3]])
        size = os.path.getsize(out)
        r = batch(inp, out)
        check("a rerun of a finished job runs nothing", r.returncode == 0 and os.path.getsize(out) == size and f"{n} already done" in r.stderr,
              r.stderr[-400:])
        # A duplicate custom_id stops everything before any work.
        with open(f"{d}/dup.jsonl", "w") as f:
            f.write(json.dumps(requests(2)[0]) + "\n" + json.dumps(requests(2)[0]) + "\n")
        r = batch(f"{d}/dup.jsonl", f"{d}/dup-out.jsonl")
        check("a duplicate custom_id: exit 1 naming both lines", r.returncode == 1 and "lines 1 and 2" in r.stderr, r.stderr)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
