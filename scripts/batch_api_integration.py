#!/usr/bin/env python3
"""The server's Batch API driven by the official `openai` client: a file uploaded, a batch created,
the server SIGKILLed mid-batch and started again, the batch resumed to the end; its output equals
`switchyard batch`'s on the same file (greedy), line for line by custom_id, none missing, none
twice. Also: a graceful restart (SIGTERM) mid-batch, an interactive request served ahead of batch
work, a cancel, a file that cannot run, and the API's errors.

    python3 scripts/batch_api_integration.py [path/to/switchyard]
Prints "N passed, N failed"; exits 1 on any failure.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import openai

import server_integration  # its server start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build/debug/switchyard"))
COMMON = ["--threads", "2", "--precision", "f32", "--context-length", "256"]
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok  ' if condition else 'FAIL'} {name}{'' if condition else ': ' + str(detail)[:1500]}", flush=True)


def requests(n, chat=True, prefix="req"):
    words = ["In the beginning", "And God said", "Blessed are the meek", "The LORD is my shepherd", "And it came to pass"]
    lines = []
    for i in range(n):
        prompt = " ".join(words[(i + k) % len(words)] for k in range(1 + i % 4))
        if chat:
            body = {"model": "demo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8 + i % 9, "temperature": 0}
            lines.append({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        else:
            lines.append({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/completions",
                          "body": {"model": "demo", "prompt": prompt, "max_tokens": 8 + i % 7, "temperature": 0}})
    return lines


def write(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def outcome(r):
    body = r["response"]["body"]
    c = body["choices"][0]
    return (c.get("text") or c["message"]["content"], c["finish_reason"], body["usage"]["completion_tokens"])


def reference(inp, d):
    out = f"{d}/ref-{os.path.basename(inp)}"
    r = subprocess.run([BIN, "batch", "--input", inp, "--output", out, "--max-sequences", "8"] + COMMON,
                       capture_output=True, text=True, timeout=900)
    check(f"switchyard batch on {os.path.basename(inp)} (the reference)", r.returncode == 0, r.stderr[-600:])
    return {json.loads(l)["custom_id"]: outcome(json.loads(l)) for l in open(out)}


def start(batch_dir):
    args = ["--max-sequences", "8", "--shutdown-deadline", "5"] + COMMON + (["--batch-dir", batch_dir] if batch_dir else [])
    server, port = server_integration.start(BIN, args)
    return server, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)


def wait(client, batch_id, until, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if until(b):
            return b
        time.sleep(0.05)
    return client.batches.retrieve(batch_id)


def results_of(client, file_id):
    if not file_id:
        return []
    return [json.loads(l) for l in client.files.content(file_id).text.splitlines()]


def main():
    with tempfile.TemporaryDirectory() as d:
        store = f"{d}/store"
        chat_in, text_in = f"{d}/chat.jsonl", f"{d}/text.jsonl"
        n, m = 90, 40
        write(chat_in, requests(n))
        write(text_in, requests(m, chat=False, prefix="text"))
        ref_chat, ref_text = reference(chat_in, d), reference(text_in, d)

        server, client = start(store)
        uploaded = client.files.create(file=open(chat_in, "rb"), purpose="batch")
        check("files.create keeps the upload", uploaded.id.startswith("file-") and uploaded.bytes == os.path.getsize(chat_in)
              and uploaded.purpose == "batch" and uploaded.filename == "chat.jsonl", uploaded)
        check("files.content gives it back byte for byte", client.files.content(uploaded.id).content == open(chat_in, "rb").read())
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                      metadata={"suite": "batch_api_integration"})
        check("batches.create", batch.id.startswith("batch_") and batch.status in ("validating", "in_progress")
              and batch.request_counts.total == n and batch.metadata == {"suite": "batch_api_integration"}, batch)

        # An interactive request while the batch has a queue: it goes ahead of the waiting batch work.
        # (Counted on the disk: the batch's counts reach the database once a second.)
        def finished():
            path = f"{store}/files/{batch.id}.output.jsonl"
            return open(path, "rb").read().count(b"\n") if os.path.exists(path) else 0
        while finished() < 5:
            time.sleep(0.01)
        before = finished()
        answer = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "And God said"}], max_tokens=8,
                                                temperature=0)
        after = finished()
        # With 8 sequences at once it waits for one of the 8 running to finish, not for the queue.
        check(f"an interactive request is served ahead of the batch's queue ({after - before} batch requests finished meanwhile)",
              answer.choices[0].finish_reason in ("stop", "length") and after - before <= 16 and after < n, (before, after))

        b = wait(client, batch.id, lambda b: b.request_counts.completed >= 30)
        check("in progress, with counts", b.status == "in_progress" and 30 <= b.request_counts.completed < n, b)
        server.send_signal(signal.SIGKILL)
        server.wait()
        on_disk = sum(1 for _ in open(f"{store}/files/{batch.id}.output.jsonl"))
        print(f"     SIGKILL with {on_disk} of {n} results on disk", flush=True)

        server, client = start(store)
        b = wait(client, batch.id, lambda b: b.status in ("completed", "failed", "cancelled"))
        check("after a SIGKILL and a restart the batch completes", b.status == "completed" and b.request_counts.completed == n
              and b.request_counts.failed == 0 and b.output_file_id and b.error_file_id is None and b.completed_at, b)
        out = results_of(client, b.output_file_id)
        ids = [r["custom_id"] for r in out]
        check(f"{n} output lines, one per custom_id", len(ids) == n and set(ids) == set(ref_chat), (len(ids), len(set(ids))))
        got = {r["custom_id"]: outcome(r) for r in out}
        diff = [i for i in ref_chat if got.get(i) != ref_chat[i]]
        check("the output equals switchyard batch's, by custom_id", not diff, [(i, got.get(i), ref_chat[i]) for i in diff[:3]])
        check("output lines in OpenAI's format", all(r["id"].startswith("batch_req_") and r["error"] is None
                                                      and r["response"]["status_code"] == 200 for r in out), out[0])

        # A graceful restart (SIGTERM) mid-batch: batch work stops at once and resumes.
        text_file = client.files.create(file=open(text_in, "rb"), purpose="batch")
        text_batch = client.batches.create(input_file_id=text_file.id, endpoint="/v1/completions", completion_window="24h")
        wait(client, text_batch.id, lambda b: b.request_counts.completed >= 10)
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        check(f"SIGTERM stops the server mid-batch at once ({time.monotonic() - stopping:.1f} s)", time.monotonic() - stopping < 5)
        server, client = start(store)
        b = wait(client, text_batch.id, lambda b: b.status in ("completed", "failed", "cancelled"))
        got = {r["custom_id"]: outcome(r) for r in results_of(client, b.output_file_id)}
        check("after SIGTERM and a restart the completions batch equals switchyard batch's",
              b.status == "completed" and got == ref_text and b.request_counts.completed == m, (b.status, len(got)))

        # A cancel: what finished is kept, every other request gets a batch_cancelled error line.
        again = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait(client, again.id, lambda b: b.request_counts.completed >= 3)
        cancelling = client.batches.cancel(again.id)
        check("batches.cancel", cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at, cancelling)
        b = wait(client, again.id, lambda b: b.status == "cancelled", 120)
        done, failed = results_of(client, b.output_file_id), results_of(client, b.error_file_id)
        codes = {r["response"]["body"]["error"]["code"] for r in failed}
        check(f"cancelled: {len(done)} finished, {len(failed)} cancelled, each request once",
              b.status == "cancelled" and len(done) + len(failed) == n and len(done) < n and codes <= {"batch_cancelled"}
              and {r["custom_id"] for r in done} | {r["custom_id"] for r in failed} == set(ref_chat), (b.status, len(done), len(failed)))
        check("finished requests of a cancelled batch equal the reference", all(outcome(r) == ref_chat[r["custom_id"]] for r in done))
        try:
            client.batches.cancel(batch.id)
            check("cancelling a completed batch is refused", False)
        except openai.ConflictError as e:
            check("cancelling a completed batch is refused (409)", "completed" in str(e), e)

        # Files that cannot run, or not all of it.
        bad = f"{d}/bad.jsonl"
        write(bad, requests(2) + ["{not json", json.dumps(requests(1, chat=False, prefix="other")[0])])
        f = client.files.create(file=open(bad, "rb"), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = wait(client, b.id, lambda b: b.status in ("completed", "failed"))
        errs = results_of(client, b.error_file_id)
        check("bad lines go to the error file with their line numbers, the rest run",
              b.status == "completed" and b.request_counts.total == 4 and b.request_counts.completed == 2 and b.request_counts.failed == 2
              and sorted(e["error"]["message"][:7] for e in errs) == ["line 3:", "line 4:"], (b, errs))
        dup = f"{d}/dup.jsonl"
        write(dup, [requests(1)[0], requests(1)[0]])
        f = client.files.create(file=open(dup, "rb"), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        check("a duplicate custom_id fails the batch, naming both lines",
              b.status == "failed" and "lines 1 and 2" in b.errors.data[0].message, b)

        # The API's errors, as the client raises them.
        def raises(name, kind, call):
            try:
                call()
                check(name, False, "no error")
            except kind as e:
                check(name, True)
            except Exception as e:
                check(name, False, repr(e))
        raises("purpose other than batch: 400", openai.BadRequestError,
               lambda: client.files.create(file=open(chat_in, "rb"), purpose="fine-tune"))
        raises("an unknown batch: 404", openai.NotFoundError, lambda: client.batches.retrieve("batch_nope"))
        raises("an unknown input file: 404", openai.NotFoundError,
               lambda: client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"))
        raises("another endpoint: 400", openai.BadRequestError,
               lambda: client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"))
        raises("deleting a file twice: 404", openai.NotFoundError,
               lambda: [client.files.delete(f.id), client.files.delete(f.id)])
        listed = client.batches.list(limit=2)
        check("batches.list pages newest first", [x.id for x in listed.data][:1] == [client.batches.list().data[0].id]
              and len(listed.data) == 2 and listed.has_more)
        check("files.list has the uploads and results", {uploaded.id, text_file.id} <= {x.id for x in client.files.list().data})
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

        # Without --batch-dir the Batch API says how to turn it on.
        server, client = start(None)
        raises("without --batch-dir: 404 naming the flag", openai.NotFoundError, lambda: client.batches.list())
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
