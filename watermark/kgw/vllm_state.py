"""The vLLM plugin's batch bookkeeping as plain Python (no torch, no vllm), so it is unit-tested here.

vLLM v1 keeps a *persistent batch*: row ``i`` of the logits belongs to whichever request currently sits at
index ``i``. Before each step it calls ``update_state(BatchUpdate)`` with the requests ``added`` (index,
SamplingParams, prompt ids, a live reference to the request's output-id list), ``removed`` (indices) and
``moved`` (one-way moves and swaps). ``apply_batch_update`` mirrors vLLM's own helper for sparse per-request
state (``process_dict_updates`` in ``vllm/v1/sample/logits_processor/builtin.py``): added, then removed, then
moved; a one-way move a -> b drops b's old entry, a swap exchanges them. ``gather`` turns the state into
the per-row arrays the torch core consumes.

The objects in a ``BatchUpdate`` are used by duck typing (``.added``, ``.removed``, ``.moved``, and the
move direction's ``.name``), so tests can feed simple stand-ins of vLLM's dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class RowState:
    """One watermarked request in the persistent batch."""

    subkeys: tuple[int, int, int, int]
    delta: float
    prompt_tail: list[int]  # the last prompt tokens (context for the first output tokens)
    output: list[int]  # vLLM's live list of this request's output ids (appended to by the engine)


class BatchUpdateLike(Protocol):
    @property
    def added(self) -> Sequence[tuple[int, Any, list[int] | None, list[int]]]: ...

    @property
    def removed(self) -> Sequence[int]: ...

    @property
    def moved(self) -> Sequence[tuple[int, int, Any]]: ...


NewState = Callable[[Any, list[int] | None, list[int]], RowState | None]


def apply_batch_update(rows: dict[int, RowState], update: BatchUpdateLike | None, new_state: NewState) -> bool:
    """Fold one ``BatchUpdate`` into ``rows`` (index -> state); returns whether anything changed."""
    if not update:
        return False
    changed = False
    for index, params, prompt_ids, output_ids in update.added:
        state = new_state(params, prompt_ids, output_ids)
        if state is not None:
            rows[index] = state
            changed = True
        elif rows.pop(index, None) is not None:  # a new, unwatermarked request took a watermarked slot
            changed = True
    if rows:
        for index in update.removed:
            if rows.pop(index, None) is not None:
                changed = True
        for a, b, direction in update.moved:
            a_state = rows.pop(a, None)
            b_state = rows.pop(b, None)
            if a_state is not None:
                rows[b] = a_state
                changed = True
            if b_state is not None:
                changed = True
                if getattr(direction, "name", str(direction)) == "SWAP":
                    rows[a] = b_state
    return changed


@dataclass(frozen=True, slots=True)
class Gathered:
    """Per-row inputs for one ``apply``: rows of the logits to bias and what to bias them with."""

    rows: list[int]
    prev: list[list[int]]  # (R, prev_tokens), oldest first
    subkeys: list[tuple[int, int, int, int]]
    delta: list[float]
    placeholders: list[int]  # rows skipped because their context holds a not-yet-known token id (< 0)


def gather(rows: dict[int, RowState], prev_tokens: int, batch_size: int) -> Gathered:
    """Collect the rows to watermark this step. A row is skipped when its history (prompt tail + output)
    is shorter than the PRF window — detection does not score those positions either — when δ is 0, and
    when its index is outside the current logits (defensive: vLLM never sends that).

    A context holding a negative id is skipped too: under async scheduling vLLM fills the output lists with
    ``-1`` placeholders for tokens still being copied back from the GPU, unless a processor declares
    ``needs_output_token_ids()`` (the plugin does). Biasing with a placeholder in the window would write a
    green list that detection, which sees the real token, can never reproduce; skipping the row leaves the
    position unbiased, which only costs power. Such rows are reported in ``placeholders``."""
    out = Gathered([], [], [], [], [])
    for index in sorted(rows):
        st = rows[index]
        if index >= batch_size or st.delta == 0.0:
            continue
        out_len = len(st.output)
        if out_len >= prev_tokens:
            ctx = st.output[out_len - prev_tokens :]
        else:
            ctx = (st.prompt_tail + st.output)[-prev_tokens:]
        if len(ctx) < prev_tokens:
            continue
        if min(ctx) < 0:
            out.placeholders.append(index)
            continue
        out.rows.append(index)
        out.prev.append([int(t) for t in ctx])
        out.subkeys.append(st.subkeys)
        out.delta.append(st.delta)
    return out


# --- Model Runner V2 (vLLM >= 0.30's default engine loop) ------------------------------------------------------
#
# V2 keeps no per-processor copy of the token history: a processor is told which request enters which *slot*
# (``add_request(slot, SamplingParams)``), and each step's ``apply(logits, ctx)`` says which slot every logits
# row belongs to. The history lives on the device in the runner's ``all_token_ids`` (slot x position). So the
# plugin keeps only each watermarked slot's key and strength here, and ``select_v2`` picks the rows to bias on
# the host from the step's host-side arrays; the previous tokens are then gathered on the device.


@dataclass(frozen=True, slots=True)
class SlotState:
    """One watermarked request in a V2 slot."""

    subkeys: tuple[int, int, int, int]
    delta: float


@dataclass(frozen=True, slots=True)
class Selected:
    """The rows of one V2 step to bias: logits row, its slot, and how many tokens precede the sampled one."""

    rows: list[int]
    slots: list[int]
    ends: list[int]  # tokens visible to the token being sampled: its context is positions ends-h .. ends-1
    subkeys: list[tuple[int, int, int, int]]
    delta: list[float]


def select_v2(slots: dict[int, SlotState], idx_mapping: Sequence[int], seq_lens: Sequence[int],
              prev_tokens: int) -> Selected:
    """Rows to watermark this step: batch position ``b`` (one logits row per request: the plugin refuses
    speculative decoding) holds slot ``idx_mapping[b]``, whose sampled token sees ``seq_lens[b]`` tokens.
    Skipped like the V1 path (``gather``): slots without a directive, δ = 0, and histories shorter than the
    PRF window (detection does not score those positions either)."""
    out = Selected([], [], [], [], [])
    for b, slot in enumerate(idx_mapping):
        st = slots.get(int(slot))
        if st is None or st.delta == 0.0:
            continue
        end = int(seq_lens[b])
        if end < prev_tokens:
            continue
        out.rows.append(b)
        out.slots.append(int(slot))
        out.ends.append(end)
        out.subkeys.append(st.subkeys)
        out.delta.append(st.delta)
    return out
