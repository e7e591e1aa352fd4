"""Lock-step A/B benchmarks: one worker process per source tree, each importing its own tree's code.

``spawn(cmd, trees)`` starts ``cmd`` once per tree with that tree as working directory and ``PYTHONPATH`` (so
the worker imports that tree's packages), talks to it over stdin/stdout, and waits for each worker's ``ready``
line. The caller then hands out chunks of work alternately (A B B A ...), so a change of the host's load hits
both builds alike.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def spawn(cmd: list[str], trees: dict[str, Path]) -> dict[str, subprocess.Popen[str]]:
    procs = {
        k: subprocess.Popen(cmd, cwd=d, env={**os.environ, "PYTHONPATH": str(d)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
        for k, d in trees.items()
    }
    for p in procs.values():
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs
