"""KGW verification against many clients, two source trees side by side: HEAD (or any tree) and this one.

    git -C . archive HEAD | (rm -rf /tmp/kgw-before && mkdir /tmp/kgw-before && tar -x -C /tmp/kgw-before)
    .venv/bin/python bench/kgw_verify_ab.py --before /tmp/kgw-before [--clients 100000] [--repeat 7]

Each measurement runs in a fresh interpreter whose ``sys.path`` starts with the tree under test (the
editable install would otherwise always import this checkout; the child checks ``watermark.__file__``).
Runs alternate before/after, so both see the same load. Two measurements per round:

- ``cli``: the whole ``ipgate verify FILE --scheme kgw --tokenizer T --clients F --json`` process (start-up,
  imports, reading the client list, key derivation, tokenizing, counting, output), wall and CPU time
  (user + sys of the child, which is less disturbed by other load than wall time);
- ``inproc``: in one process, key derivation (``KeyRing.candidates``) and ``score_tuples``, best of 3.

The text is the first 800 tokens of real answers (``../shared/data/responses.jsonl``) under the
evaluation tokenizer (``var/kgw/tokenizer.json``; see ``bench/kgw_bench.py``). The outputs of both trees
must be byte-identical; the script says so and exits 1 when they are not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MASTER = "kgw-bench-master-secret-0123456789"

_CLI = """
import sys
sys.path.insert(0, {tree!r})
import gateway, watermark
assert watermark.__file__.startswith({tree!r}) and gateway.__file__.startswith({tree!r}), watermark.__file__
from gateway.cli import main
sys.exit(main())
"""

_INPROC = """
import json, sys, time
sys.path.insert(0, {tree!r})
import watermark
assert watermark.__file__.startswith({tree!r}), watermark.__file__
from watermark.keys import KeyRing
from watermark.kgw import detect
from watermark.kgw.params import KgwParams
params = KgwParams()
ids = detect.tokenizer_encoder({tok!r})([open({text!r}, encoding="utf-8").read()])
names = open({clients!r}, encoding="utf-8").read().split()
ring = KeyRing({master!r}.encode())
tuples = detect.collect_tuples(ids, params)
best = {{"derive": 9e9, "score": 9e9}}
for _ in range(3):
    t0 = time.perf_counter(); keys = ring.candidates(names); t1 = time.perf_counter()
    res = detect.score_tuples(tuples, keys, params); t2 = time.perf_counter()
    best["derive"] = min(best["derive"], t1 - t0); best["score"] = min(best["score"], t2 - t1)
print(json.dumps({{**best, "result": repr(res)}}))
"""


def _run(code: str, argv: list[str]) -> tuple[float, float, bytes]:
    env = {**os.environ, "IPGATE_WATERMARK_SECRET": MASTER}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE)
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"child failed ({status}): {code[:80]}")
    return time.perf_counter() - t0, ru.ru_utime + ru.ru_stime, out


def _text(tok_path: str, out: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import kgw_bench  # the same 800-token text as bench/kgw_bench.py

    text, _ = kgw_bench._text_and_tokenizer(tok_path, out.parent)
    out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the other source tree (e.g. HEAD via git archive)")
    ap.add_argument("--after", default=str(REPO), help="default: this checkout")
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7, help="rounds (each: before and after, order alternating)")
    ap.add_argument("--tokenizer", default=str(REPO / "var" / "kgw" / "tokenizer.json"))
    ap.add_argument("--skip-inproc", action="store_true")
    ap.add_argument("--text", help="the text to verify (default: 800 tokens of ../shared/data, as kgw_bench.py)")
    args = ap.parse_args(argv)
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    rows: dict[str, dict[str, list[float]]] = {w: {} for w in trees}
    outputs: dict[str, set[bytes]] = {w: set() for w in trees}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        text, clients = Path(tmp) / "leak.txt", Path(tmp) / "clients.txt"
        if args.text:
            text.write_text(Path(args.text).read_text(encoding="utf-8"), encoding="utf-8")
        else:
            _text(args.tokenizer, text)
        clients.write_text("".join(f"client-{i}\n" for i in range(args.clients)), encoding="utf-8")
        cli_argv = ["verify", str(text), "--scheme", "kgw", "--tokenizer", args.tokenizer, "--clients",
                    str(clients), "--json"]
        for i in range(args.repeat):
            for which in ("before", "after") if i % 2 == 0 else ("after", "before"):
                tree = trees[which]
                loads.append(os.getloadavg()[0])
                wall, cpu, out = _run(_CLI.format(tree=tree), cli_argv)
                outputs[which].add(out)
                rows[which].setdefault("cli wall", []).append(wall)
                rows[which].setdefault("cli cpu", []).append(cpu)
                if not args.skip_inproc:
                    code = _INPROC.format(tree=tree, tok=args.tokenizer, text=str(text), clients=str(clients),
                                          master=MASTER)
                    _, _, out = _run(code, [])
                    res = json.loads(out)
                    outputs[which].add(res["result"].encode())
                    for k in ("derive", "score"):
                        rows[which].setdefault(f"in-process {k}", []).append(res[k])
                print(f"round {i + 1}: {which} cli {wall:.3f} s wall, {cpu:.3f} s cpu", file=sys.stderr, flush=True)
    same = outputs["before"] == outputs["after"] and len(outputs["after"]) == (1 if args.skip_inproc else 2)
    print(f"\n{args.clients:,} clients, {args.repeat} alternating rounds, load average "
          f"{min(loads):.2f}–{max(loads):.2f}, outputs identical: {same}\n")
    print("| measurement | before median (s) | after median (s) | after / before |")
    print("|---|---|---|---|")
    if not args.skip_inproc:
        for w in trees:
            rows[w]["in-process derive + score"] = [
                x + y for x, y in zip(rows[w]["in-process derive"], rows[w]["in-process score"], strict=True)]
    for k in rows["after"]:
        mb, ma = statistics.median(rows["before"][k]), statistics.median(rows["after"][k])
        print(f"| {k} | {mb:.3f} | {ma:.3f} | {ma / mb:.2f} |")
    print(f"\nall CLI wall times (s): before {sorted(round(x, 3) for x in rows['before']['cli wall'])}, "
          f"after {sorted(round(x, 3) for x in rows['after']['cli wall'])}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
