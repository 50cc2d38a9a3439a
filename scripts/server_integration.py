#!/usr/bin/env python3
"""The real server on loopback, driven by the official `openai` package.

    pip install openai
    python3 scripts/server_integration.py [path/to/switchyard]

Chat and completions, streaming and not, stop sequences, usage counts; 16 concurrent streaming
clients each getting exactly the tokens a solo run gives (greedy); a client killed mid-stream;
malformed, mistyped, over-long and unauthorised requests; then the server is still healthy, every
KV cache is freed, its memory is back near the idle level, and SIGTERM ends it with exit status 0.

Then hardening, on servers of their own with short timeouts: a max_tokens of 2^63-1; idle, slow
and capped connections; a body that never arrives, one too large; out-of-range parameters and
invalid UTF-8; a non-streaming client that leaves; the model file cut short under a server that
holds its weights in memory; an expert read that fails under --ram-budget (500, /health 503, then
back); SIGTERM with work in flight, and a second SIGINT. Prints "N passed, N failed".
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def metric(port, name, key=KEY):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
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


def start(binary, arguments):
    """A server on a free port; its stderr is drained so it never blocks."""
    server = subprocess.Popen([binary, "serve", "--port", "0"] + arguments, cwd=ROOT, stderr=subprocess.PIPE, text=True)
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
    return server, port


def health(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    r = conn.getresponse()
    return r.status, r.read().decode()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "debug", "switchyard")
    server, port = start(binary, ["--api-key", KEY, "--max-sequences", "8", "--context-length", "384", "--queue-limit", "64"])
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
        check("another model name is served with this model",
              client.completions.create(model="gpt-4", prompt="In", max_tokens=2, temperature=0).choices[0].text is not None)
        check("/metrics needs the key too", metric(port, "switchyard_queue_depth", key=None) is None)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/models", headers={"Authorization": f"bearer {KEY}"})
        check("the Bearer scheme is case-insensitive", conn.getresponse().status == 200)

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        check("still healthy", conn.getresponse().status == 200)
        check("every KV cache freed", metric(port, "switchyard_kv_cache_bytes") == 0 and metric(port, "switchyard_queue_depth") == 0)
        rss = rss_kb(server.pid)
        check("memory back near the idle level", rss <= idle_rss * 1.25 + 20_000, f"idle {idle_rss} kB, now {rss} kB")
        # Three 7 MB prompts are refused by size before tokenising, off the server's executor:
        # /health answers meanwhile.
        big = json.dumps({"model": MODEL, "prompt": "a" * (7 << 20)})
        answers = []
        senders = [threading.Thread(target=lambda: answers.append(raw(port, "/v1/completions", big)[0])) for _ in range(3)]
        for t in senders:
            t.start()
        started = time.time()
        status, _ = health(port)
        waited = time.time() - started
        for t in senders:
            t.join()
        check("three 7 MB prompts: refused, /health answered meanwhile", answers == [400] * 3 and status == 200 and waited < 2,
              (answers, status, waited))

    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = None
        check("SIGTERM: graceful exit 0", code == 0, code)
    hardening(binary)
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def copy_model(work, name):
    source = os.path.join(ROOT, "models", MODEL)
    target = os.path.join(work, name)
    os.makedirs(target)
    for f in os.listdir(source):
        if f.endswith(".json") or f.endswith(".safetensors"):
            shutil.copy(os.path.join(source, f), target)
    return target


def closes_within(port, seconds, send=b"", trickle=None):
    """Whether the server closes a connection (idle, or sending `trickle` a byte every 0.5 s) within `seconds`."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(0.5)
    started = time.time()
    if send:
        s.sendall(send)
    i = 0
    try:
        while time.time() - started < seconds:
            if trickle and i < len(trickle):
                try:
                    s.sendall(trickle[i:i + 1])
                except OSError:
                    return True
                i += 1
            try:
                if s.recv(4096) == b"":
                    return True
            except socket.timeout:
                continue
            except OSError:
                return True
        return False
    finally:
        s.close()


def hardening(binary):
    work = tempfile.mkdtemp()
    model = copy_model(work, "model")
    server, port = start(binary, ["--model", model, "--idle-timeout", "2", "--body-timeout", "2", "--max-connections", "8",
                                  "--max-request-bytes", "1MiB", "--context-length", "128", "--shutdown-deadline", "3"])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
    try:
        r = client.completions.create(model=MODEL, prompt="In the beginning", max_tokens=2 ** 63 - 1, temperature=0)
        check("max_tokens 2^63-1: served to the context's end", r.choices[0].finish_reason in ("length", "stop"), r.choices[0])
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=2 ** 63 - 1,
                                           max_tokens=None, temperature=0)
        check("max_completion_tokens 2^63-1 too", r.choices[0].finish_reason in ("length", "stop"))
        check("an idle connection is closed after --idle-timeout", closes_within(port, 6))
        check("a request head at a byte every 0.5 s is cut off", closes_within(port, 8, trickle=b"GET /health HTTP/1.1\r\nHost: x\r\n" * 4))
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
        started = time.time()
        status, _ = health(port)
        check("12 idle connections over a cap of 8: a new request is still served", status == 200 and time.time() - started < 10,
              (status, time.time() - started))
        for s in idle:
            s.close()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
        s.settimeout(8)
        try:
            reply = s.recv(4096).decode(errors="replace")
        except OSError:
            reply = ""
        s.close()
        check("a body that never arrives: 408 or closed", reply == "" or " 408 " in reply.split("\r\n")[0], reply[:80])
        status, body = raw(port, "/v1/completions", json.dumps({"model": MODEL, "prompt": "x" * (2 << 20)}), key=None)
        check("a body over --max-request-bytes: 413 in OpenAI's shape", status == 413 and "error" in json.loads(body), (status, body[:120]))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v2/nothing")
        r = conn.getresponse()
        check("404 in OpenAI's shape", r.status == 404 and "error" in json.loads(r.read().decode()))
        for name, arguments in [("top_logprobs 100000", dict(logprobs=True, top_logprobs=100000)),
                                ("top_logprobs -1", dict(logprobs=True, top_logprobs=-1)),
                                ("frequency_penalty 3", dict(frequency_penalty=3)),
                                ("temperature NaN", dict(temperature=float("nan")))]:
            try:
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, **arguments)
                check(name + " is 400", False, "no error")
            except openai.BadRequestError as e:
                check(name + " is 400", e.status_code == 400)
            except Exception as e:
                # the client itself may refuse to encode NaN
                check(name + " is 400", "nan" in name.lower(), repr(e))
        status, _ = raw(port, "/v1/completions", b'{"model": "m", "prompt": "\xff\xfe"}', key=None)
        check("invalid UTF-8 in a string is 400", status == 400, status)
        r = client.completions.create(model=MODEL, prompt="In the", max_tokens=2, temperature=1e-45)
        check("temperature 1e-45 is greedy, not garbage", r.choices[0].text == client.completions.create(
            model=MODEL, prompt="In the", max_tokens=2, temperature=0).choices[0].text)
        biased = client.completions.create(model=MODEL, prompt="In the", max_tokens=3, temperature=0, logit_bias={"100": 100})
        check("logit_bias is applied", biased.choices[0].text == client.completions.create(
            model=MODEL, prompt="x", max_tokens=3, temperature=0, logit_bias={"100": 100}).choices[0].text, biased.choices[0].text)
        # A non-streaming client that leaves: its sequence stops.
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"model": MODEL, "prompt": "And it came to pass", "max_tokens": 120, "temperature": 0.8}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Leave once the sequence runs (a loaded machine may take a while to get there).
        for _ in range(200):
            if (metric(port, "switchyard_active_sequences", key=None) or 0) >= 1:
                break
            time.sleep(0.05)
        s.close()
        for _ in range(50):
            if metric(port, "switchyard_active_sequences", key=None) == 0:
                break
            time.sleep(0.1)
        check("a non-streaming client that leaves: its sequence stops", metric(port, "switchyard_active_sequences", key=None) == 0
              and metric(port, "switchyard_client_disconnects_total", key=None) >= 1)
        # The model file cut short under the server: its weights are in memory.
        weights = os.path.join(model, "model.safetensors")
        os.truncate(weights, os.path.getsize(weights) // 3)
        r = client.completions.create(model=MODEL, prompt="In the beginning", max_tokens=4, temperature=0)
        check("the model file cut short: still served from memory", r.choices[0].text is not None)
        # SIGTERM with a long request in flight: exits within the deadline and a few seconds.
        threading.Thread(target=lambda: raw(port, "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "And", "max_tokens": 128, "temperature": 0.8}), key=None), daemon=True).start()
        time.sleep(0.5)
        started = time.time()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            code = None
        check("SIGTERM under load: exit 0 within the deadline", code == 0 and time.time() - started < 3 + 6, (code, time.time() - started))
    finally:
        if server.poll() is None:
            server.kill()

    # A second SIGINT ends the server at once.
    server, port = start(binary, ["--model", copy_model(work, "model2"), "--shutdown-deadline", "60", "--context-length", "256"])
    threading.Thread(target=lambda: raw(port, "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "And", "max_tokens": 250, "temperature": 0.8, "stream": True}), key=None), daemon=True).start()
    time.sleep(1)
    server.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.time()
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=10)
        check("a second SIGINT exits at once", time.time() - started < 3, time.time() - started)
    except subprocess.TimeoutExpired:
        server.kill()
        check("a second SIGINT exits at once", False, "still running")

    # Under --ram-budget experts are read from the file: a read that fails fails the requests that
    # needed it (500) and /health says why; with the file back, both recover.
    model = copy_model(work, "model3")
    plan = json.loads(subprocess.run([binary, "plan", "--model", model, "--json", "--context-length", str(4 * 128)],
                                     capture_output=True, text=True, check=True).stdout)
    budget = plan["always_on_host_bytes"] + plan["reserved_host_bytes"] + 3 * plan["expert_ram_slot_bytes"]
    server, port = start(binary, ["--model", model, "--ram-budget", str(budget), "--max-sequences", "4", "--context-length", "128"])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)
    try:
        first = client.completions.create(model=MODEL, prompt="In the beginning", max_tokens=6, temperature=0).choices[0].text
        weights = os.path.join(model, "model.safetensors")
        saved = open(weights, "rb").read()
        os.truncate(weights, 4096)
        try:
            client.completions.create(model=MODEL, prompt="And the LORD said", max_tokens=6, temperature=0)
            check("a failed expert read is a 500", False, "no error")
        except openai.InternalServerError as e:
            check("a failed expert read is a 500", e.status_code == 500 and "model.safetensors" in str(e.body), e.body)
        status, body = health(port)
        check("/health says why", status == 503 and "model.safetensors" in body, (status, body))
        with open(weights, "wb") as f:
            f.write(saved)
        again = client.completions.create(model=MODEL, prompt="In the beginning", max_tokens=6, temperature=0).choices[0].text
        check("with the file back, the same text and a healthy server", again == first and health(port)[0] == 200, (again, first))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
