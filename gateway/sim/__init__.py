"""The simulated model server: an OpenAI-compatible stand-in for a GPU backend (demo, tests, benchmarks)."""

LABEL = "simulated model server (stands in for a GPU backend)"
