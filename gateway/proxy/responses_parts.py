"""The text parts of a streamed Responses answer (``PartStream``, a base of ``ResponsesRelay``): one ``Part`` per
text part, keyed by ``PartKey``. A part's text goes through the ``<think>`` stripper and its own embedder; closing
a part sends its held-back word as a synthetic delta event; settling a part gives its ``done`` copies (the done
event, the finished item, the final snapshot) exactly the text and the logprobs the client received in deltas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.hooks import StreamEmbedder
from gateway.proxy.responses_output import Output
from gateway.proxy.responses_scrub import PART_TEXT
from gateway.proxy.sse import MAX_EVENT_BYTES, SSETooLarge

PartKey = tuple[int, str, int]  # (upstream output_index, "content" | "summary", index within that list)
_ANSWER_TYPES = frozenset({"response.output_text.delta", "response.refusal.delta"})

# What a stream may keep for its done copies (``PartStream.keep``), in units of about a byte of memory: the backend's
# own response.completed carries all of it and is refused over MAX_EVENT_BYTES, so a stream keeping twice that can
# never complete. Besides each text character and logprob entry (>= 32 bytes of JSON there), what is kept per
# delta piece (a list slot and its string), per part (its record, embedder, dict entry) and per output item or
# announced part (dict and set entries) counts too: counting characters alone, an endless stream of empty deltas,
# or of deltas each opening a new part (517 B of memory per 100-byte event, 0 counted), grew without bound.
KEEP_MAX = 2 * MAX_EVENT_BYTES
KEEP_PIECE = 16
KEEP_PART = 512
KEEP_ENTRY = 128
KEEP_LOGPROB = 32


@dataclass(slots=True)
class Part:
    emb: StreamEmbedder | None
    think: int  # this part's key for the hook's per-part <think> stripper (strip_reasoning)
    answer: bool
    delta_type: str  # the delta event that carries this part's text
    sent: list[str] = field(default_factory=list)  # the text the client received, in deltas
    closed: bool = False
    # the (hardened) logprobs the client received for this part, by position: its later copies carry these
    lps: list[Any] = field(default_factory=list)
    cut: bool = False  # strip_reasoning removed or held back text of the last piece fed: its tokens not sent yet
    thought: bool = False  # strip_reasoning removed text (a <think> section): the part's later copies of logprobs go
    fed: int = 0  # characters of answer text fed to the <think> stripper, and those it let through: a leading
    shown: int = 0  # newline or "<" is held back, then let through (no thought), so ``cut`` alone is no proof


class PartStream(Output):
    """The per-part half of the stream relay. ``ResponsesRelay.__init__`` sets the state declared here."""

    _parts: dict[PartKey, Part]
    _index: dict[int, int | None]
    _ids: dict[int, Any]
    _announced: set[PartKey]
    _kept: int  # what the stream keeps for its done copies (see KEEP_MAX)

    def keep(self, units: int) -> None:
        """Count ``units`` more kept; past ``KEEP_MAX`` the stream can never complete: ``SSETooLarge``."""
        self._kept += units
        if self._kept > KEEP_MAX:
            raise SSETooLarge(f"the response keeps more than {KEEP_MAX} bytes of text and parts")

    def _part(self, key: PartKey, delta_type: str) -> Part:
        part = self._parts.get(key)
        if part is None:
            self.keep(KEEP_PART)
            answer = delta_type in _ANSWER_TYPES
            part = self._parts[key] = Part(self._embedder(answer), self._think_key(), answer, delta_type)
        return part

    def _feed(self, part: Part, text: str, last: bool) -> str:
        part.cut = False
        if part.answer:
            kept = self._think(part.think, text, last)
            part.cut = kept != text
            part.fed, part.shown = part.fed + len(text), part.shown + len(kept)
            part.thought = part.thought or (last and part.shown < part.fed)
            text = kept
        new = part.emb.feed(text) if part.emb is not None else text
        if last and part.emb is not None:
            new += part.emb.finish()
        if new:  # (an empty piece kept nothing but its list slot: an endless run of them grew the list for ever)
            part.sent.append(new)
        return new

    def _synthetic(self, key: PartKey, part: Part, text: str) -> dict[str, Any]:
        oi, kind, i = key
        ev: dict[str, Any] = {"type": part.delta_type, "item_id": self._ids.get(oi),
                              "output_index": self._index.get(oi, oi),
                              ("summary_index" if kind == "summary" else "content_index"): i, "delta": text,
                              "sequence_number": 0}
        if part.delta_type == "response.output_text.delta":
            ev["logprobs"] = []
        return ev

    def _close(self, key: PartKey) -> list[dict[str, Any]]:
        """Close a part: its held-back word as a synthetic delta event (none when nothing was held)."""
        part = self._parts[key]
        if part.closed:
            return []
        part.closed = True
        rest = self._feed(part, "", True)
        return [self._synthetic(key, part, rest)] if rest else []

    def _final_part(self, part: dict[str, Any], key: PartKey) -> list[dict[str, Any]]:
        """A part in a ``done`` event or a finished item gets the text the client received for it; returns
        the delta events to send before (a part whose text the backend had not finished yet)."""
        t = part.get("type")
        spec = PART_TEXT.get(t) if isinstance(t, str) else None  # a list or object is unhashable: no crash
        if spec is None:
            return []
        fld = spec[0]
        delta_type = "response.reasoning_summary_text.delta" if key[1] == "summary" else (
            "response.output_text.delta" if part["type"] == "output_text" else
            "response.refusal.delta" if part["type"] == "refusal" else "response.reasoning_text.delta")
        got, pre = self._settle(key, delta_type, part.get(fld))
        part[fld] = "".join(got.sent)
        self._copy_logprobs(part, got)
        return pre

    def _copy_logprobs(self, holder: dict[str, Any], part: Part) -> None:
        """A later copy of a part's logprobs (``output_text.done``, ``content_part.done``, a finished item, the
        final snapshot: vLLM repeats them) carries the values the client already got for those positions. The
        tier's noise drawn afresh on each copy would give several independent draws per token, whose mean
        averages the noise away; and each copy would be counted again. Positions not seen yet are hardened
        and counted once."""
        lp = holder.get("logprobs")
        if not lp or part.emb is not None or part.thought or not isinstance(lp, list):
            self._logprobs(holder, part.emb is not None or part.thought)
            return
        got = part.lps
        got.extend([None] * (len(lp) - len(got)))
        missing = [i for i, g in enumerate(got[:len(lp)]) if g is None]
        if missing:
            fresh: dict[str, Any] = {"logprobs": [lp[i] for i in missing]}
            self._logprobs(fresh, False)
            if len(fresh["logprobs"]) != len(missing):  # a cap of 0: none at all
                holder["logprobs"] = []
                return
            for i, h in zip(missing, fresh["logprobs"], strict=True):
                got[i] = h
        out = []
        for e, g in zip(lp, got, strict=False):
            if isinstance(e, dict) and isinstance(g, dict):
                tops = {a.get("token"): a for a in e.get("top_logprobs") or () if isinstance(a, dict)}
                e = {**e, **g, "top_logprobs": [{**tops.get(a.get("token"), {}), **a} if isinstance(a, dict) else a
                                                for a in g.get("top_logprobs") or ()]}
            else:
                e = g
            out.append(e)
        holder["logprobs"] = out

    def _settle(self, key: PartKey, delta_type: str, text: Any) -> tuple[Part, list[dict[str, Any]]]:
        """A part at its end, and the delta events to send before its final text: one the backend never
        streamed is watermarked whole and sent as one delta; a streamed one is closed (held-back word flushed)."""
        part = self._parts.get(key)
        if part is not None:
            return part, self._close(key)
        part = self._part(key, delta_type)
        whole = self._feed(part, text if isinstance(text, str) else "", True)
        part.closed = True
        # a delta for a part the client was never told of (no ``content_part.added``: a backend that sent only
        # the item, or only the final snapshot) breaks the SDK's accumulator; the watermarked text is in the copy
        return part, [self._synthetic(key, part, whole)] if whole and key in self._announced else []

    def _item(self, item: dict[str, Any], oi: int) -> list[dict[str, Any]]:
        pre: list[dict[str, Any]] = []
        for kind in ("content", "summary"):
            parts = item.get(kind)
            for i, part in enumerate(parts if isinstance(parts, list) else ()):
                if isinstance(part, dict):
                    pre.extend(self._final_part(part, (oi, kind, i)))
        return pre
