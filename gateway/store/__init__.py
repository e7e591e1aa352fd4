"""Shared state: the ``StateStore`` contract and its memory and Redis implementations."""
