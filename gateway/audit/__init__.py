"""The audit trail of administrative actions: hash-chained records (``chain``), written to the shared store
and an optional append-only JSONL file (``trail``)."""
