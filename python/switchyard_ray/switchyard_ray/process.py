"""One Switchyard process, as an actor holds it: started with its own stdin pipe (closing it ends
the process), its address read from the one line it prints, watched so that its death ends the
actor with a non-zero status and Ray restarts both."""
import json
import os
import re
import subprocess
import threading
import time


class ProcessGone(RuntimeError):
    """The process ended, or never said where it listens."""


LISTENING = "SWITCHYARD_LISTENING "
SERVING = re.compile(r"serving .* at (http://\S+)/v1")


class SwitchyardProcess:
    def __init__(self, args, ready_timeout=120.0, exit_actor_on_death=True):
        self.args = list(args)
        # Never a new session: Ray cleans up the actor's process group, and the process also exits
        # when its stdin (this pipe) closes or its parent goes.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.address = None
        self.info = {}
        self.stderr_tail = []
        ready = threading.Event()

        def read_stdout():
            for line in self.proc.stdout:
                if line.startswith(LISTENING) and self.address is None:
                    self.info = json.loads(line[len(LISTENING):])
                    self.address = self.info["address"]
                    ready.set()

        def read_stderr():
            for line in self.proc.stderr:
                self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-50:]
                m = SERVING.search(line)
                if m and self.address is None:
                    self.address = m.group(1)
                    self.info = {"address": self.address, "pid": self.proc.pid}
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        deadline = time.monotonic() + ready_timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise ProcessGone(f"{' '.join(self.args[:2])} did not start: status {self.proc.poll()}; " + " | ".join(self.stderr_tail[-5:]))
        if exit_actor_on_death:
            def watch():
                status = self.proc.wait()
                # A non-zero exit of the actor's process makes Ray restart the actor (max_restarts);
                # exit_actor() would count as intended and not restart it.
                os._exit(1 if status == 0 else min(max(status, 1), 125))

            threading.Thread(target=watch, daemon=True).start()

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
