"""The alert model: redaction of evidence and the JSON format sinks receive."""

from __future__ import annotations

import json

import pytest

from gateway.alerts.model import MAX_EXAMPLE_CHARS, Alert, redact_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Translate 'hello' into French", "Translate 'hello' into French"),
        ("My card is 4111 1111 1111 1111, call 555-0100", "My card is #### #### #### ####, call ###-####"),
        ("mail jane.doe+x@example.co.uk now", "mail <email> now"),
        ("see https://intranet.example.com/a?b=1 please", "see <url> please"),
        ("key sk_live_abcdefghijklmnop123 leaked", "key <long> leaked"),
        ("  spread\n\nover   lines ", "spread over lines"),
    ],
)
def test_redact_text(raw: str, expected: str) -> None:
    assert redact_text(raw) == expected


def test_redact_truncates() -> None:
    out = redact_text("word " * 100)
    assert len(out) <= MAX_EXAMPLE_CHARS and out.endswith("…")


def _alert(**kw: object) -> Alert:
    base: dict[str, object] = dict(
        id="a1", ts=1_700_000_000.0, client="c1", tenant="t1", tier="throttle", tier_index=2,
        previous_tier="watch", score=0.91234567, reasons=("212 of the last 250 prompts fill 3 templates",),
        detectors=("template",), request_ids=("r1", "r2"), examples=("Write 10 questions about user 1234",),
        cluster=("c2",), cluster_score=0.5,
    )
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_json_is_redacted_by_default_and_round_trips() -> None:
    a = _alert()
    d = json.loads(a.to_json())
    assert d["evidence"]["examples"] == ["Write ## questions about user ####"]
    assert d["evidence"]["redacted"] is True
    assert d["client"] == "c1" and d["tier"] == "throttle" and d["score"] == 0.9123
    assert set(d) == {"schema", "id", "ts", "client", "tenant", "tier", "tier_index", "previous_tier", "score",
                      "reasons", "detectors", "evidence", "unscored"}
    back = Alert.from_dict(d)
    assert back.client == a.client and back.reasons == a.reasons and back.cluster == a.cluster
    raw = json.loads(a.to_json(redact=False))
    assert raw["evidence"]["examples"] == ["Write 10 questions about user 1234"]


def test_dedup_key_ignores_numbers_in_reasons() -> None:
    a = _alert(detectors=(), reasons=("212 of the last 250 prompts fill 3 templates",))
    b = _alert(detectors=(), reasons=("230 of the last 250 prompts fill 2 templates",))
    assert a.dedup_key() == b.dedup_key()
    assert _alert().dedup_key() != _alert(tier_index=3).dedup_key()
    assert _alert().dedup_key() != _alert(detectors=("logit_probe",)).dedup_key()
