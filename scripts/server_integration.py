#!/usr/bin/env python3
"""The real server on loopback, driven by the official `openai` package.

    pip install openai
    python3 scripts/server_integration.py [path/to/switchyard]

Chat and completions, streaming and not, stop sequences, usage counts; 16 concurrent streaming
clients each getting exactly the tokens a solo run gives (greedy); a client killed mid-stream;
malformed, mistyped, unknown-model, over-long and unauthorised requests; then the server is still
healthy, every KV cache is freed, its memory is back near the idle level, and SIGTERM ends it with
exit status 0. Prints "N passed, N failed".
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "switchyard-kjv-moe"
KEY = "integration-key"
results = []


def check(name, condition, detail=""):
    results.append(bool(condition))
    print(f"{'ok  ' if condition else 'FAIL'} {name}{'' if condition else ': ' + str(detail)}", flush=True)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(port, name):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def raw(port, path, body, key=KEY):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read().decode()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "debug", "switchyard")
    server = subprocess.Popen([binary, "serve", "--port", "0", "--api-key", KEY, "--max-sequences", "8",
                               "--context-length", "384", "--queue-limit", "64"],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.time() + 120
    while port is None and time.time() < deadline:
        line = server.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if m:
            port = int(m.group(1))
    if port is None:
        print("the server did not start")
        server.kill()
        sys.exit(1)
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=300)

    try:
        check("models list", [m.id for m in client.models.list().data] == [MODEL])
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who was the first king?"}],
                                              max_tokens=16, temperature=0)
        content = chat.choices[0].message.content
        check("chat completion", content and chat.choices[0].finish_reason == "length", chat)
        check("chat usage", chat.usage.completion_tokens == 16 and chat.usage.total_tokens == chat.usage.prompt_tokens + 16, chat.usage)
        pieces, usage = [], None
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who was the first king?"}],
                                                     max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        check("chat streaming equals non-streaming", "".join(pieces) == content, ("".join(pieces), content))
        check("streaming usage", usage is not None and usage.completion_tokens == 16, usage)

        done = client.completions.create(model=MODEL, prompt="In the beginning", max_tokens=12, temperature=0)
        streamed = "".join(c.choices[0].text for c in client.completions.create(model=MODEL, prompt="In the beginning",
                                                                                  max_tokens=12, temperature=0, stream=True))
        check("completion, streaming and not", done.choices[0].text and streamed == done.choices[0].text, (streamed, done.choices[0].text))
        word = done.choices[0].text.split()[2]
        stopped = client.completions.create(model=MODEL, prompt="In the beginning", max_tokens=12, temperature=0, stop=[word])
        check("stop sequence", stopped.choices[0].finish_reason == "stop" and word not in stopped.choices[0].text
              and done.choices[0].text.startswith(stopped.choices[0].text), stopped.choices[0])
        lp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                            temperature=0, logprobs=True, top_logprobs=2)
        items = lp.choices[0].logprobs.content
        check("logprobs", len(items) == 3 and all(len(i.top_logprobs) == 2 and i.logprob <= 0 for i in items), lp.choices[0].logprobs)

        idle_rss = rss_kb(server.pid)
        # 16 concurrent streaming clients get exactly their solo outputs.
        prompts = [f"And the king said unto the {w}" for w in
                   ["priest", "prophet", "people", "servant", "Levite", "captain", "woman", "man",
                    "elders", "children", "watchman", "stranger", "shepherd", "scribe", "porter", "singer"]]
        solo = [client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0).choices[0].text for p in prompts]
        together = [None] * len(prompts)

        def run(i):
            together[i] = "".join(c.choices[0].text for c in client.completions.create(
                model=MODEL, prompt=prompts[i], max_tokens=10, temperature=0, stream=True))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check("16 concurrent streams match their solo runs", together == solo,
              [(a, b) for a, b in zip(together, solo) if a != b][:3])

        # A client that goes away mid-stream.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({"model": MODEL, "prompt": "And it came to pass", "max_tokens": 300,
                                                                  "temperature": 0.8, "stream": True}),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        response.fp.readline()
        conn.sock.shutdown(2)
        conn.close()
        for _ in range(100):
            if metric(port, "switchyard_active_sequences") == 0 and (metric(port, "switchyard_client_disconnects_total") or 0) >= 1:
                break
            time.sleep(0.1)
        check("a killed client's sequence stops", metric(port, "switchyard_active_sequences") == 0
              and metric(port, "switchyard_client_disconnects_total") >= 1)

        status, body = raw(port, "/v1/chat/completions", '{"model": "' + MODEL + '", "messages": [')
        check("malformed JSON is 400", status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error", (status, body))
        for name, call in [
            ("wrong type is 400", lambda: client.completions.create(model=MODEL, prompt="x", max_tokens="ten")),
            ("unknown model is 400", lambda: client.completions.create(model="gpt-4", prompt="x", max_tokens=2)),
            ("over-long prompt is 400", lambda: client.completions.create(model=MODEL, prompt="And " * 500, max_tokens=2)),
        ]:
            try:
                call()
                check(name, False, "no error")
            except openai.BadRequestError as e:
                check(name, e.status_code == 400 and "message" in e.body, e.body)
        try:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
            check("wrong API key is 401", False, "no error")
        except openai.AuthenticationError as e:
            check("wrong API key is 401", e.status_code == 401)
        status, _ = raw(port, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x"}), key=None)
        check("missing API key is 401", status == 401)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        check("still healthy", conn.getresponse().status == 200)
        check("every KV cache freed", metric(port, "switchyard_kv_cache_bytes") == 0 and metric(port, "switchyard_queue_depth") == 0)
        rss = rss_kb(server.pid)
        check("memory back near the idle level", rss <= idle_rss * 1.25 + 20_000, f"idle {idle_rss} kB, now {rss} kB")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = None
        check("SIGTERM: graceful exit 0", code == 0, code)
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
