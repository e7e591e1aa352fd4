"""Train the small language model the KGW evaluation runs on (CPU, a few minutes), and sample from it.

No pretrained model can be downloaded here, so the evaluation uses its own: a byte-level BPE tokenizer
(``tokenizers``) and a 2-layer GRU LM trained on real assistant answers from ``shared/data/responses.jsonl``
(red-team hh-rlhf answers excluded). It is far weaker than a production LLM; what matters for KGW is the
entropy per token of the distribution it samples from, which ``kgw_eval.py`` measures and reports.

    .venv/bin/python scripts/eval/kgw_lm.py            # writes var/kgw/tokenizer.json and var/kgw/lm.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "responses.jsonl"
OUT = REPO / "var" / "kgw"

log = logging.getLogger("kgw_lm")


def load_texts(limit: int, seed: int = 0) -> list[str]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").split("\n") if line.strip()]
    texts = [r["response"] for r in rows if r["source"] != "hh-rlhf-harmless-base"]
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def train_tokenizer(texts: list[str], vocab_size: int, path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))


class GruLM(nn.Module):
    def __init__(self, vocab: int, emb: int = 128, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.GRU(emb, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.rnn(self.embed(ids), state)
        return self.head(out), state


def load_model() -> tuple[Any, GruLM]:
    """The evaluation's model as ``main`` saved it: its ``tokenizers.Tokenizer`` and the trained ``GruLM``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    ckpt = torch.load(OUT / "lm.pt")
    model = GruLM(ckpt["vocab"])
    model.load_state_dict(ckpt["state"])
    return tok, model


def train(model: GruLM, stream: torch.Tensor, steps: int, seq: int = 64, batch: int = 32, seed: int = 0) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.monotonic()
    step, loss_avg = 0, 0.0
    g = torch.Generator().manual_seed(seed)  # the windows drawn: the same every run for one seed
    # A fixed number of steps (not a time budget) so the model is the same however loaded the machine is.
    while step < steps:
        idx = torch.randint(0, len(stream) - seq - 1, (batch,), generator=g)
        x = torch.stack([stream[i : i + seq] for i in idx])
        y = torch.stack([stream[i + 1 : i + seq + 1] for i in idx])
        logits, _ = model(x)
        loss = loss_fn(logits.reshape(-1, model.vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = 0.98 * loss_avg + 0.02 * loss.item() if step else loss.item()
        step += 1
        if step % 200 == 0:
            log.info("step %d loss %.3f (%.0fs)", step, loss_avg, time.monotonic() - start)
            sys.stderr.flush()
    return loss_avg


Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(
    model: GruLM,
    prompts: torch.Tensor,
    new_tokens: int,
    processor: Processor | None,
    temperature: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float, float]:
    """Sample ``new_tokens`` per row after ``prompts`` (B, P). The processor gets (input_ids, scores) like a
    Hugging Face ``LogitsProcessor`` and runs before the temperature, as in ``generate``. Returns the new
    ids (B, new_tokens), the mean entropy (nats) of the
    tempered distributions sampled from (before the watermark bias), and the mean negative log-likelihood of
    the chosen tokens under the unbiased model at temperature 1 (its log is the sample's perplexity)."""
    model.eval()
    ids = prompts.clone()
    logits, state = model(ids)
    last = logits[:, -1, :]
    ent_sum, nll_sum, n = 0.0, 0.0, 0
    for _ in range(new_tokens):
        logp = torch.log_softmax(last / temperature, dim=-1)
        ent_sum += float(-(logp.exp() * logp).sum())
        n += last.shape[0]
        # Same order as transformers' generate() and vLLM: logits processors first, temperature after
        # (so the effective bias is delta / temperature).
        scores = (last if processor is None else processor(ids, last.clone())) / temperature
        nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
        nll_sum += float(-torch.log_softmax(last, dim=-1).gather(1, nxt).sum())
        ids = torch.cat([ids, nxt], dim=1)
        logits, state = model(nxt, state)
        last = logits[:, -1, :]
    return ids[:, prompts.shape[1] :], ent_sum / max(1, n), nll_sum / max(1, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=1200, help="training steps (~3-6 min on 2 CPU threads)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    texts = load_texts(args.texts)
    tok_path = OUT / "tokenizer.json"
    train_tokenizer(texts, args.vocab, tok_path)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    eot = tok.token_to_id("<|endoftext|>")
    if eot is None:
        raise RuntimeError("tokenizer lacks <|endoftext|>")
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream.extend(enc.ids)
        stream.append(eot)
    data = torch.tensor(stream, dtype=torch.long)
    log.info("%d texts, %d tokens, vocab %d", len(texts), len(stream), tok.get_vocab_size())
    model = GruLM(tok.get_vocab_size())
    loss = train(model, data, args.steps)
    torch.save({"state": model.state_dict(), "vocab": model.vocab, "loss": loss}, OUT / "lm.pt")
    log.info("final training loss %.3f nats/token; saved %s", loss, OUT / "lm.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
