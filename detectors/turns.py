"""Which user turn of a chat request the detectors read, and the memory of a client's last turns.

The memory is one blob of the client's state envelope (``TURNS``): the CRC32s of its last ``TURN_MEMORY``
last turns, little-endian u32 on every host. ``read_turn`` is the engine's first step on a chat request
(``Engine.fold_request`` / ``Engine.replay_request``).
"""

from __future__ import annotations

import sys
from array import array

from detectors import state as envelope
from detectors.features import draw, rebase
from detectors.types import RequestFeatures

TURNS = "~turns"  # the envelope blob of a client's recent last-turn CRCs (never a detector name: "~" is not one)
TURN_MEMORY = 64  # last turns remembered per client (4 bytes each, little-endian u32)
_BIG_ENDIAN = sys.byteorder == "big"


def read_turn(env: envelope.Envelope, feats: RequestFeatures) -> tuple[RequestFeatures, str | None]:
    """Which user turn of a chat request the detectors read, and the memory of the client's last turns.

    A conversation sent turn by turn shows each earlier user turn first as a last turn: a turn of the
    history the client never sent that way (not among its last ``TURN_MEMORY`` last turns) was written into
    the history by the client. Reading only the last turn let a harvester put its template fill in such a
    turn, behind a made-up assistant reply, and end with a short "please answer that". So the request is
    scored by one of {its unseen history turns, its last turn}, drawn uniformly (the batch-prompt draw: the
    client cannot steer it). A conversation resumed after its turns left the memory reads a real earlier
    turn again now and then: that is benign text, scored like any prompt."""
    blob = env.blobs.get(TURNS, b"")
    ring = array("I")
    if len(blob) % 4 == 0:
        ring.frombytes(blob)
        if _BIG_ENDIAN:  # the state format is little-endian on every host
            ring.byteswap()
    history = feats.history
    drawn = None
    if history:
        unseen = [text for crc, text in history if crc not in ring]
        if unseen:
            k = draw(len(unseen) + 1)
            if k < len(unseen):
                drawn = unseen[k]
                feats = rebase(feats, drawn)
    crc = feats.turn_crc
    if crc and crc not in ring:  # 0: no text to remember
        ring.append(crc)
        if len(ring) > TURN_MEMORY:
            del ring[: len(ring) - TURN_MEMORY]
        if _BIG_ENDIAN:
            ring.byteswap()
        env.blobs[TURNS] = ring.tobytes()
    return feats, drawn
