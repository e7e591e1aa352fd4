"""``ipgate demo`` end to end: it starts, prints a working token and examples, serves, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import openai

from tests.support.harness import free_port


def test_demo_serves_the_printed_example() -> None:
    port, admin, s1, s2 = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPGATE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", str(port), "--admin-port", str(admin),
         "--sim-ports", f"{s1},{s2}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        out = ""
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while "Ctrl-C stops everything" not in out and time.monotonic() < deadline:
            out += proc.stdout.readline()
        token = re.search(r"Authorization: Bearer (\S+?)\"", out)
        assert token, out
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in out and "from openai import OpenAI" in out
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token.group(1), max_retries=0)
        r = client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=5)
        assert r.choices[0].message.content
        client.close()
        # the printed openai-python example itself runs (chat stream, then the Responses API)
        head, rest = out.split(" - <<'PY'\n", 1)
        assert head.rsplit("\n", 1)[1].strip() == sys.executable, "the example names the demo's own interpreter"
        snippet = rest.split("\nPY\n", 1)[0]
        ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr  # an exception or 4xx would exit 1
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
    assert rc == 0


def test_demo_on_a_taken_port_is_one_line_and_exit_2() -> None:
    """A port in use (the gateway's or a simulated backend's) is a plain error, not an 'internal error'."""
    port, admin, s1, s2 = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPGATE_")}
    for taken in (port, s1):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", taken))
            holder.listen()
            proc = subprocess.run(
                [sys.executable, "-m", "gateway", "demo", "--port", str(port), "--admin-port", str(admin),
                 "--sim-ports", f"{s1},{s2}"], capture_output=True, env=env, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("ipgate demo: cannot listen:") and "internal error" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        if taken == port:  # README: the gateway's ports are claimed before anything binds, the demo's sims too
            assert "listening on" not in proc.stderr, proc.stderr
