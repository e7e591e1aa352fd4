"""The traffic generator: benign personas and attackers as trace records (pure: prompts + seed in, dicts out).

A record is one line of the replay trace format (``{"ts", "client", "endpoint", "body"}`` plus
``"response": {"usage": ..., "finish_reasons": [...]}``) with a ``"label"`` that replay ignores and the
evaluation reads: ``{"kind", "attack" (this request), "attacker" (this client), "cluster"}``.

Benign personas draw real prompts from 1-3 preferred categories, send multi-turn conversations turn by
turn, keep their own habits (endpoint, temperature, max_tokens; a few ask for logprobs, set a fixed
logit_bias ban list, use n > 1, or append "think step by step") and follow human timing. A few are
legitimate batch integrations (steady script timing, real prompts) - the hard benign case.

Attack kinds: ``logit_probe`` (three variants), ``template``, ``self_instruct``, ``topic_sweep`` (phrase
rotation over a topic taxonomy), ``cot`` (with rubric grading), ``slow_low`` (harvesting at human pace), and
``dataset_replay`` (natural prompts of a public dataset at script pace: the in-distribution evasion).
Any kind can be mixed into a benign persona's stream at an attack share, and ``hydra`` spreads one campaign
over K accounts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.traffic import timing
from detectors.traffic.corpus import (
    COT_PREFIXES,
    COT_SUFFIXES,
    META_PROMPTS,
    RUBRIC_PROMPTS,
    SLOTS,
    SWEEP_PHRASES,
    TEMPLATES,
    TOPICS,
    Prompt,
    Split,
    split_phrases,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ATTACK_KINDS = ("logit_probe", "template", "self_instruct", "topic_sweep", "cot", "slow_low", "dataset_replay")
HARVEST_KINDS = ("template", "self_instruct", "topic_sweep", "cot")
EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z

Record = dict[str, Any]
ContentFn = Callable[[random.Random], tuple[str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Bank:
    """Prompts and attack phrasings of one split."""

    prompts: Sequence[Prompt]
    split: Split

    def by_category(self, cats: Sequence[str]) -> list[Prompt]:
        return [p for p in self.prompts if p.category in cats] or list(self.prompts)


def _usage(rng: random.Random, prompt: str, max_tokens: int | None, median: float, n: int = 1) -> dict[str, Any]:
    completion = max(1, int(rng.lognormvariate(math.log(median), 0.7)))
    finish = "stop"
    if max_tokens is not None and completion >= max_tokens:
        completion, finish = max_tokens, "length"
    prompt_tokens = int(len(prompt.split()) * 1.3) + 8
    return {
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion * n,
                  "total_tokens": prompt_tokens + completion * n},
        "finish_reasons": [finish] * n,
    }


def _record(ts: float, client: str, endpoint: str, body: dict[str, Any], response: dict[str, Any],
            label: dict[str, Any]) -> Record:
    return {"ts": round(ts, 3), "client": client, "endpoint": endpoint, "body": body, "response": response,
            "label": label}


# -- benign ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Habits:
    endpoint: str
    temperature: float | None
    max_tokens: int | None
    logprobs: bool
    ban_bias: dict[str, int] | None
    n_multi: float
    step_by_step: float
    batch: bool


def _habits(rng: random.Random) -> Habits:
    batch = rng.random() < 0.04
    return Habits(
        endpoint=COMPLETIONS if rng.random() < 0.08 else CHAT,
        temperature=rng.choice([None, None, 0.0, 0.2, 0.7, 1.0]),
        max_tokens=rng.choice([None, None, 256, 512, 1024, 2048]),
        logprobs=rng.random() < 0.04,
        ban_bias={str(rng.randrange(100, 100_000)): -100 for _ in range(rng.randint(1, 6))}
        if rng.random() < 0.03 else None,
        n_multi=0.3 if rng.random() < 0.03 else 0.0,
        # A person may ask for steps on a share of prompts. A *script* that appends a chain-of-thought demand
        # to every prompt it sends is what CoT harvesting looks like, so batch integrations never do.
        step_by_step=rng.uniform(0.2, 0.6) if rng.random() < 0.08 and not batch else 0.0,
        batch=batch,
    )


def _benign_body(rng: random.Random, h: Habits, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "ipgate-sim"}
    if h.endpoint == CHAT:
        body["messages"] = messages
    else:
        body["prompt"] = messages[-1]["content"]
    if h.temperature is not None:
        body["temperature"] = h.temperature
    if h.max_tokens is not None:
        body["max_tokens"] = h.max_tokens
    if h.logprobs:
        if h.endpoint == CHAT:
            body.update(logprobs=True, top_logprobs=5)
        else:
            body["logprobs"] = 5
    if h.ban_bias:
        body["logit_bias"] = dict(h.ban_bias)
    if h.n_multi and rng.random() < h.n_multi:
        body["n"] = rng.randint(2, 4)
    return body


def benign_messages(rng: random.Random, bank: Bank, n: int, h: Habits) -> list[list[dict[str, str]]]:
    """n requests' message lists from real prompts; multi-turn prompts are sent turn by turn."""
    cats = rng.sample(["chat", "math", "qa", "code", "instruction"], rng.choice([1, 1, 2, 2, 3]))
    pool = bank.by_category(cats)
    order = rng.sample(range(len(pool)), len(pool))  # a person does not ask the same question twice ...
    out: list[list[dict[str, str]]] = []
    while len(out) < n:
        if out and rng.random() < 0.03:  # ... except to regenerate an answer
            out.append(out[-1])
            continue
        p = pool[order[len(out) % len(order)]]
        history: list[dict[str, str]] = []
        for turn in p.turns[: n - len(out)]:
            text = turn
            if h.step_by_step and rng.random() < h.step_by_step:
                text += rng.choice(["\nLet's think step by step.", " Explain step by step.", " Show your work."])
            history = [*history, {"role": "user", "content": text}]
            out.append(history)
            history = [*history, {"role": "assistant", "content": "(answer)"}]
    return out


def benign_client(rng: random.Random, bank: Bank, client: str, start: float, n: int | None = None) -> list[Record]:
    h = _habits(rng)
    if n is None:
        n = max(3, min(int(rng.lognormvariate(math.log(30 if not h.batch else 200), 1.0)), 800))
    if h.batch:
        times = timing.script(rng, n, start, rng.uniform(20.0, 600.0), rng.uniform(0.1, 0.5))
    else:
        times = timing.human(rng, n, start, rng.randint(-8, 9))
    label = {"kind": "benign_batch" if h.batch else "benign", "attack": False, "attacker": False, "cluster": None}
    out = []
    for ts, messages in zip(times, benign_messages(rng, bank, n, h), strict=True):
        body = _benign_body(rng, h, messages)
        resp = _usage(rng, messages[-1]["content"], h.max_tokens, 250.0, int(body.get("n", 1)))
        out.append(_record(ts, client, h.endpoint, body, resp, label))
    return out


def _pick(rng: random.Random, items: Sequence[str], lo: int, hi: int) -> list[str]:
    return rng.sample(list(items), min(rng.randint(lo, hi), len(items)))


# -- attack content -------------------------------------------------------------------------------------
def _fill(rng: random.Random, template: str, bank: Bank, topics: Sequence[str]) -> str:
    q = rng.choice(bank.prompts).turns[0][:400]
    values = {k: rng.choice(v) for k, v in SLOTS.items()}
    return template.format(topic=rng.choice(topics), n=rng.choice([3, 5, 10, 20]), question=q, **values)


def content_fn(kind: str, rng: random.Random, bank: Bank) -> ContentFn:
    """A campaign's content generator (hydra members share one); returns (prompt, extra body fields)."""
    topics = split_phrases(TOPICS, bank.split)
    if kind == "template":
        chosen = _pick(rng, split_phrases(TEMPLATES, bank.split), 1, 4)
        return lambda r: (_fill(r, r.choice(chosen), bank, topics), {"max_tokens": r.choice([1024, 2048])})
    if kind == "self_instruct":
        metas = _pick(rng, split_phrases(META_PROMPTS, bank.split), 1, 2)
        seeds = bank.by_category(["instruction", "chat"])

        def meta(r: random.Random) -> tuple[str, dict[str, Any]]:
            examples = "\n".join(f"{i + 1}. {r.choice(seeds).turns[0][:200]}" for i in range(3))
            return r.choice(metas).format(n=r.choice([10, 20, 40]), examples=examples), {"temperature": 1.0}

        return meta
    if kind == "topic_sweep":  # phrase rotation over a topic taxonomy
        phrases = _pick(rng, split_phrases(SWEEP_PHRASES, bank.split), 2, 4)
        order = list(topics)
        rng.shuffle(order)
        counter = iter(range(10**9))

        def sweep(r: random.Random) -> tuple[str, dict[str, Any]]:
            i = next(counter)
            topic = order[i % len(order)] + ("" if i < len(order) else f" (aspect {i // len(order) + 1})")
            return r.choice(phrases).format(topic=topic), {"max_tokens": 2048}

        return sweep
    if kind == "dataset_replay":  # natural prompts of a public dataset, every category, no template
        walk = list(bank.prompts)
        rng.shuffle(walk)
        it = iter(range(10**9))
        return lambda r: (walk[next(it) % len(walk)].turns[0], {"max_tokens": 2048, "temperature": 0.0})
    if kind == "cot":
        sufs = _pick(rng, split_phrases(COT_SUFFIXES, bank.split), 1, 2)
        pres = split_phrases(COT_PREFIXES, bank.split)
        questions = bank.by_category(["math", "qa", "code"])
        answers = bank.by_category(["chat", "instruction"])
        use_prefix = rng.random() < 0.3
        rubric_share = rng.choice([0.0, 0.0, 0.2])

        def cot(r: random.Random) -> tuple[str, dict[str, Any]]:
            q = r.choice(questions).turns[0]
            if r.random() < rubric_share:
                a, b = r.choice(answers).turns[0][:300], r.choice(answers).turns[0][:300]
                return r.choice(RUBRIC_PROMPTS).format(question=q, answer=a, answer2=b), {"temperature": 0.0}
            text = (r.choice(pres) + q) if use_prefix else (q + r.choice(sufs))
            return text, {"max_tokens": 4096, "temperature": 0.0}

        return cot
    raise ValueError(f"unknown harvesting kind {kind!r}")


def _probe_bodies(rng: random.Random, bank: Bank, n: int) -> list[tuple[str, dict[str, Any]]]:
    variant = rng.choice(["carlini", "carlini", "argmax", "echo"])
    fixed = variant == "argmax" or rng.random() < 0.5  # the same few prompts, or a fresh random one each time
    prompts = [p.turns[0][:300] for p in rng.sample(list(bank.prompts), 3)]
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        prompt = prompts[i % len(prompts)] if fixed else rng.choice(bank.prompts).turns[0][:300]
        if variant == "carlini":
            toks = rng.sample(range(100, 100_000), rng.randint(4, 40))
            body: dict[str, Any] = {"model": "ipgate-sim", "messages": [{"role": "user", "content": prompt}],
                                    "logit_bias": {str(t): 100 for t in toks}, "logprobs": True,
                                    "top_logprobs": rng.choice([5, 20]), "max_tokens": 1}
            out.append((CHAT, body))
        elif variant == "argmax":
            tok = rng.randrange(100, 100_000)
            body = {"model": "ipgate-sim", "prompt": prompt, "logit_bias": {str(tok): round(rng.uniform(-40, 40), 2)},
                    "max_tokens": 1, "temperature": 0}
            out.append((COMPLETIONS, body))
        else:
            body = {"model": "ipgate-sim", "prompt": prompt, "echo": True, "logprobs": 5,
                    "max_tokens": rng.choice([0, 1])}
            out.append((COMPLETIONS, body))
    return out


def _attack_times(rng: random.Random, kind: str, n: int, start: float) -> list[float]:
    if kind == "slow_low":
        return timing.human(rng, n, start, rng.randint(-8, 9))
    style = rng.choice(["script", "script", "poisson", "parallel"])
    if style == "script":
        return timing.script(rng, n, start, rng.uniform(1.0, 30.0), rng.uniform(0.0, 0.3))
    if style == "poisson":
        return timing.poisson(rng, n, start, 1 / rng.uniform(2.0, 60.0))
    return timing.parallel(rng, n, start, rng.randint(2, 8), rng.uniform(2.0, 20.0))


def attacker_client(
    rng: random.Random, bank: Bank, client: str, kind: str, n: int, start: float, share: float = 1.0,
    content: ContentFn | None = None, cluster: str | None = None,
) -> list[Record]:
    """An attacker; ``share`` < 1 mixes the attack into a benign persona's stream (human timing)."""
    label_kind = kind if share >= 1.0 else f"mixed_{kind}"
    if kind == "logit_probe":
        times = _attack_times(rng, kind, n, start)
        label = {"kind": label_kind, "attack": True, "attacker": True, "cluster": cluster}
        return [
            _record(ts, client, ep, body, _usage(rng, "x", 1, 1.0), label)
            for ts, (ep, body) in zip(times, _probe_bodies(rng, bank, n), strict=True)
        ]
    harvest = kind if kind != "slow_low" else rng.choice((*HARVEST_KINDS[:2], "cot"))
    fn = content or content_fn(harvest, rng, bank)
    if share >= 1.0:
        times = _attack_times(rng, kind, n, start)
        benign: list[list[dict[str, str]]] = []
        h = None
    else:
        h = _habits(rng)
        h = Habits(CHAT, h.temperature, h.max_tokens, False, None, 0.0, 0.0, False)
        times = timing.human(rng, n, start, rng.randint(-8, 9))
        benign = benign_messages(rng, bank, n, h)
    out = []
    for i, ts in enumerate(times):
        if h is None or rng.random() < share:
            prompt, extra = fn(rng)
            body = {"model": "ipgate-sim", "messages": [{"role": "user", "content": prompt}], **extra}
            resp = _usage(rng, prompt, body.get("max_tokens"), 600.0)
            label = {"kind": label_kind, "attack": True, "attacker": True, "cluster": cluster}
        else:
            body = _benign_body(rng, h, benign[i])
            resp = _usage(rng, benign[i][-1]["content"], h.max_tokens, 250.0)
            label = {"kind": label_kind, "attack": False, "attacker": True, "cluster": cluster}
        out.append(_record(ts, client, CHAT, body, resp, label))
    return out


def hydra(
    rng: random.Random, bank: Bank, prefix: str, k: int, n_each: int, start: float, share: float = 0.5,
    kind: str | None = None,
) -> list[list[Record]]:
    """K accounts running one campaign (shared templates/phrasings), each mixed with benign traffic."""
    campaign = kind or rng.choice(HARVEST_KINDS)
    fn = content_fn(campaign, rng, bank)
    return [
        attacker_client(rng, bank, f"{prefix}-{i}", campaign, n_each, start + rng.uniform(0, 3600), share, fn,
                        cluster=prefix)
        for i in range(k)
    ]
