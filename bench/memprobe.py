"""Memory probe for the soak run: run ``ipgate`` under tracemalloc and record where its memory goes.

Bench-only (the product has no such switch). ``bench/soak.py --memprobe DIR`` starts the gateway as

    python bench/memprobe.py run DIR [--frames N] [--every S] [--no-trace] -- serve --config FILE

which starts tracemalloc (unless ``--no-trace``), runs ``gateway.cli.main`` in the main thread and samples from a
daemon thread every ``--every`` seconds into ``DIR/samples.jsonl``:
  - RSS, and RSS split by mapping class from ``/proc/self/smaps`` (the brk heap, 1 MiB anonymous mappings = the
    pymalloc arenas, 64 MiB-aligned anonymous mappings = glibc's per-thread arenas, other anonymous mappings =
    large ``malloc`` blocks / numpy buffers / thread stacks, file mappings = code),
  - glibc's ``mallinfo2`` (bytes in use by malloc, free bytes it holds, mmapped blocks),
  - tracemalloc's traced total (the Python-visible heap) and its own overhead,
  - ``gc`` counts per generation and the 30 most numerous object types (``gc.get_objects()``),
and dumps a tracemalloc snapshot every ``--snap-every`` seconds (``DIR/snap-<t>.tm``).

On SIGUSR1 it takes a labelled sample and snapshot, the label read from ``DIR/mark`` (the soak marks ``start``,
``1min``, ``load_end``), then writes ``DIR/<label>.done``. The label ``rest`` runs the rest experiment instead:
snapshot ``rest``, ``gc.collect(1)`` then ``gc.collect()`` (how much was garbage waiting for the collector, and
how much of it sat in generation 2), snapshot ``rest-collected``, then ``malloc_trim(0)`` (how much RSS was free
memory the allocator kept). ``--garbage`` adds, at each mark after ``start``, a census of the cyclic garbage by type;
``--gc-threshold A,B,C`` sets the collector's thresholds at the ``start`` mark (an experiment, e.g. CPython's
defaults 700,10,10 against the server's tuned ones). ``--time-trims`` times each periodic ``malloc_trim`` of the gateway
(``server.malloc_trim_interval_s``) into ``DIR/trims.jsonl``: wall and CPU time, RSS before and after.

    python bench/memprobe.py report DIR [--top 25]

prints the RSS/heap timeline, the growth between snapshots grouped by the innermost frame in ipgate's own code
(``gateway/``, ``detectors/``, ``watermark/``, so that a dict grown inside aiohttp is charged to our line that
called it) and by raw file:line, and the object-type count changes.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

OWN = ("/gateway/", "/detectors/", "/watermark/", "/fingerprint/")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


def mallinfo() -> dict[str, int]:
    m = _libc.mallinfo2()
    # uordblks: bytes malloc has handed out (arenas); fordblks: free bytes it keeps in them; hblkhd: mmapped blocks
    return {"malloc_in_use": m.uordblks, "malloc_free": m.fordblks, "malloc_mmapped": m.hblkhd,
            "malloc_arena": m.arena}


def smaps() -> dict[str, int]:
    """RSS in kB by mapping class."""
    out: collections.Counter[str] = collections.Counter()
    cls = "other"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                size_kb = (hi - lo) // 1024
                if path == "[heap]":
                    cls = "heap_brk"
                elif path.startswith("["):
                    cls = "stack_vdso"
                elif path:
                    cls = "files"
                elif size_kb == 1024:
                    cls = "pymalloc_arenas"
                elif lo % (64 << 20) == 0 and size_kb <= 65536:
                    cls = "thread_arenas"
                else:
                    cls = "anon_other"
            elif head[0] == "Rss:":
                out[cls] += int(head[1])
    return dict(out)


def pymalloc() -> dict[str, int]:
    """pymalloc's own accounting (``sys._debugmallocstats``, which prints to fd 2: captured through a temp file).
    ``arenas`` x 1 MiB is what it holds; ``allocated`` bytes are live objects; the rest is its fragmentation."""
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    out: dict[str, int] = {}
    for key, pat in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                     ("arenas_highwater", r"# arenas highwater mark\s*=\s*([\d,]+)"),
                     ("allocated", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                     ("available", r"# bytes in available blocks\s*=\s*([\d,]+)"),
                     ("unused_pools", r"unused pools \* 16384 bytes\s*=\s*([\d,]+)")):
        m = re.search(pat, text)
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


class Probe:
    """Samples in the MAIN thread (a timer thread only sends SIGUSR2): what the probe allocates then comes from
    the same malloc arena as the gateway's own work, not from a thread arena of its own that would show up as
    growth in the smaps split."""

    def __init__(self, out: Path, every: float, snap_every: float, trace: bool) -> None:
        self.out, self.every, self.snap_every, self.trace = out, every, snap_every, trace
        self.t0 = time.monotonic()
        self.next_snap = 0.0
        self.gc_threshold: tuple[int, ...] = ()
        self.census = False  # --garbage: what the cyclic garbage is made of at each mark (a full collection)
        self._samples = (out / "samples.jsonl").open("a", buffering=1)

    def sample(self, label: str, types: bool = True) -> dict[str, Any]:
        s: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1), "label": label, "rss_kb": rss_kb(),
                             "smaps_kb": smaps(), **mallinfo(), "gc_count": gc.get_count(),
                             "gc_collections": [g["collections"] for g in gc.get_stats()],
                             "gc_frozen": gc.get_freeze_count(),
                             "threads": sorted(t.name for t in threading.enumerate()),
                             "native_threads": len(os.listdir("/proc/self/task"))}
        if self.trace:
            cur, peak = tracemalloc.get_traced_memory()
            s.update(traced=cur, traced_peak=peak, tracemalloc_overhead=tracemalloc.get_tracemalloc_memory())
        if types:
            s["pymalloc"] = pymalloc()
            objs = gc.get_objects()
            s["gc_objects"] = len(objs)
            s["types"] = dict(collections.Counter(type(o).__qualname__ for o in objs).most_common(40))
            del objs
        self._samples.write(json.dumps(s) + "\n")
        return s

    def snapshot(self, label: str) -> None:
        if self.trace:
            tracemalloc.take_snapshot().dump(str(self.out / f"snap-{label}.tm"))

    def on_tick(self, *_: object) -> None:  # SIGUSR2 from the timer thread
        el = time.monotonic() - self.t0
        self.sample("periodic")
        if el >= self.next_snap:
            self.snapshot(f"{el:06.0f}")
            self.next_snap = el + self.snap_every

    def on_mark(self, *_: object) -> None:  # SIGUSR1 from the soak: a labelled point (DIR/mark holds the label)
        mark = self.out / "mark"
        label = mark.read_text().strip() if mark.exists() else "mark"
        if label == "rest":
            self.rest_experiment()
        else:
            if label == "start" and self.gc_threshold:  # after the server's own tune_gc ran
                gc.set_threshold(*self.gc_threshold)
            self.sample(label)
            self.snapshot(label)
            if label != "start" and self.census:
                self.garbage(label)
        (self.out / f"{label}.done").write_text("")

    def garbage(self, label: str) -> None:
        """What the cyclic garbage waiting for the collector is made of right now (collected as usual after)."""
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            n = gc.collect()
            kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
            size = sum(sys.getsizeof(o) for o in gc.garbage)
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
        self._samples.write(json.dumps({"label": f"garbage@{label}", "objects": n, "shallow_bytes": size,
                                        "types": dict(kinds.most_common(25))}) + "\n")
        gc.collect()

    def rest_experiment(self) -> None:
        self.sample("rest")
        self.snapshot("rest")
        t = time.monotonic()
        young = gc.collect(1)  # generations 0 and 1 first: what is left for a full collection sat in generation 2
        n = gc.collect()
        s2 = {"collected_objects": young + n, "collected_young": young, "collected_gen2": n,
              "collect_s": round(time.monotonic() - t, 3)}
        self._samples.write(json.dumps({"label": "gc.collect", **s2}) + "\n")
        self.sample("rest-collected")
        self.snapshot("rest-collected")
        _libc.malloc_trim(0)
        self.sample("rest-trimmed", types=False)


def _ticker(every: float) -> None:
    while True:
        time.sleep(every)
        os.kill(os.getpid(), signal.SIGUSR2)


def _time_trims(path: Path) -> None:
    """--time-trims: each periodic malloc_trim of the gateway (server.malloc_trim_interval_s) timed into
    ``trims.jsonl``: wall time (how long the event loop was held), the thread's CPU time (the call's own work,
    apart from preemption by other processes on a busy host), RSS before and after."""
    import gateway.memtrim as mt

    real = mt.glibc_malloc_trim

    def timed() -> Any:
        fn = real()
        if fn is None:
            return None
        f = path.open("a", buffering=1)

        def call(pad: int) -> object:
            r0, w, c = rss_kb(), time.perf_counter(), time.thread_time()
            res = fn(pad)
            w, c = time.perf_counter() - w, time.thread_time() - c
            f.write(json.dumps({"t": round(time.time(), 3), "wall_us": round(w * 1e6, 1), "cpu_us": round(c * 1e6, 1),
                                "rss_kb_before": r0, "rss_kb_after": rss_kb(), "released": res}) + "\n")
            return res
        return call
    mt.glibc_malloc_trim = timed  # type: ignore[assignment]


def cmd_run(a: argparse.Namespace, argv: list[str]) -> int:
    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    if not a.no_trace:
        tracemalloc.start(a.frames)
    probe = Probe(out, a.every, a.snap_every, not a.no_trace)
    probe.census = a.garbage
    if a.gc_threshold:
        probe.gc_threshold = tuple(int(x) for x in a.gc_threshold.split(","))
    signal.signal(signal.SIGUSR1, probe.on_mark)
    signal.signal(signal.SIGUSR2, probe.on_tick)
    threading.Thread(target=_ticker, args=(a.every,), name="memprobe-ticker", daemon=True).start()
    if a.time_trims:
        _time_trims(out / "trims.jsonl")
    from gateway.cli import main

    return main(argv)


# --- report ---------------------------------------------------------------------------------------------------

def _owner(tb: tracemalloc.Traceback) -> str:
    for fr in reversed(tb):  # innermost first
        if any(p in fr.filename for p in OWN):
            return f"{fr.filename.split('/work/main/')[-1]}:{fr.lineno}"
    fr = tb[-1]
    return f"(outside) {fr.filename.rsplit('site-packages/', 1)[-1]}:{fr.lineno}"


def _by_owner(snap: tracemalloc.Snapshot) -> collections.Counter[str]:
    c: collections.Counter[str] = collections.Counter()
    for tr in snap.traces:
        c[_owner(tr.traceback)] += tr.size
    return c


def _load(path: Path) -> tracemalloc.Snapshot:
    return tracemalloc.Snapshot.load(str(path)).filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"), tracemalloc.Filter(False, __file__)])


def cmd_report(a: argparse.Namespace) -> int:
    d = Path(a.dir)
    rows = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    print(f"{'t':>6} {'label':<15} {'rss':>6} {'traced':>6} {'m_use':>6} {'m_free':>6} {'m_mmap':>6} "
          f"{'brk':>5} {'pyar':>5} {'thar':>5} {'anon':>5} {'files':>5}  gc_objs  gc_count  collections  (MiB)")
    for r in rows:
        if "rss_kb" not in r:
            print("      ", r)
            continue
        sm = r["smaps_kb"]
        print(f"{r['t']:>6} {r['label']:<15} {r['rss_kb'] / 1024:6.1f} {r.get('traced', 0) / 2**20:6.1f} "
              f"{r['malloc_in_use'] / 2**20:6.1f} {r['malloc_free'] / 2**20:6.1f} {r['malloc_mmapped'] / 2**20:6.1f} "
              f"{sm.get('heap_brk', 0) / 1024:5.1f} {sm.get('pymalloc_arenas', 0) / 1024:5.1f} "
              f"{sm.get('thread_arenas', 0) / 1024:5.1f} {sm.get('anon_other', 0) / 1024:5.1f} "
              f"{sm.get('files', 0) / 1024:5.1f}  {r.get('gc_objects', ''):>7} {r['gc_count']} {r['gc_collections']}")
        pm = r.get("pymalloc")
        if pm and r["label"] != "periodic":
            print(f"{'':>23} pymalloc: {pm.get('arenas')} arenas (highwater {pm.get('arenas_highwater')}), "
                  f"live blocks {pm.get('allocated', 0) / 2**20:.1f} MiB, free blocks "
                  f"{pm.get('available', 0) / 2**20:.1f} MiB, unused pools {pm.get('unused_pools', 0) / 2**20:.1f} MiB")
    snaps = sorted(d.glob("snap-*.tm"))
    if len(snaps) < 2:
        return 0
    pairs = [(a.base or snaps[0].name, x.name) for x in snaps[1:] if x.name != (a.base or snaps[0].name)]
    if a.pairs:
        pairs = [(p.split(":")[0], p.split(":")[-1]) for p in a.pairs]
    for b, e in pairs:
        s0, s1 = _load(d / b), _load(d / e)
        t0 = sum(t.size for t in s0.traces)
        t1 = sum(t.size for t in s1.traces)
        print(f"\n=== {b} -> {e}: traced {t0 / 2**20:.1f} -> {t1 / 2**20:.1f} MiB "
              f"({(t1 - t0) / 2**20:+.1f}) ===")
        o0, o1 = _by_owner(s0), _by_owner(s1)
        diff = sorted(((o1[k] - o0.get(k, 0), k) for k in set(o0) | set(o1)), reverse=True)
        print(f"-- by innermost ipgate frame (top {a.top} growth) --")
        for dv, k in diff[:a.top]:
            print(f"  {dv / 1024:+10.1f} KiB  now {o1.get(k, 0) / 1024:9.1f} KiB  {k}")
        print(f"-- by file:line (top {a.top} growth) --")
        for st in s1.compare_to(s0, "lineno")[:a.top]:
            fr = st.traceback[0]
            print(f"  {st.size_diff / 1024:+10.1f} KiB  now {st.size / 1024:9.1f} KiB  {st.count_diff:+8d} blocks  "
                  f"{fr.filename.split('/work/main/')[-1].rsplit('site-packages/', 1)[-1]}:{fr.lineno}")
    typed = [r for r in rows if "types" in r]
    if len(typed) >= 2:
        t0, t1 = typed[0]["types"], typed[-1]["types"]
        print(f"\n-- object types, first sample (t={typed[0]['t']}) -> last "
              f"(t={typed[-1]['t']}, {typed[-1]['label']}) --")
        for k in sorted(set(t0) | set(t1), key=lambda k: -(t1.get(k, 0) - t0.get(k, 0)))[:a.top]:
            print(f"  {t1.get(k, 0) - t0.get(k, 0):+9d}  now {t1.get(k, 0):9d}  {k}")
    return 0


def main() -> int:
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--frames", type=int, default=12)
    r.add_argument("--every", type=float, default=10.0)
    r.add_argument("--snap-every", type=float, default=60.0)
    r.add_argument("--no-trace", action="store_true", help="sample RSS/malloc/gc only (no tracemalloc overhead)")
    r.add_argument("--garbage", action="store_true", help="at each mark after start: a full collection that "
                   "saves the cyclic garbage and counts it by type (perturbs the run: one collection per mark)")
    r.add_argument("--gc-threshold", help="experiment: gc.set_threshold(A,B,C) at the soak's start mark (after "
                   "the server's tune_gc), e.g. 700,10,10 (CPython's default)")
    r.add_argument("--time-trims", action="store_true", help="time each periodic malloc_trim of the gateway into "
                   "DIR/trims.jsonl (wall and CPU time, RSS before/after)")
    q = sub.add_parser("report")
    q.add_argument("dir")
    q.add_argument("--top", type=int, default=25)
    q.add_argument("--base", help="snapshot file name to diff the others against (default: the first)")
    q.add_argument("--pairs", nargs="*", help="explicit BASE:END snapshot file name pairs")
    a = p.parse_args(argv)
    if a.cmd == "run":
        return cmd_run(a, rest)
    return cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
