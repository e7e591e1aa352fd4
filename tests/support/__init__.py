"""Reusable end-to-end test harness (see ``tests/support/harness.py``)."""
