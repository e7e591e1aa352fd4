"""The simulated model server: an OpenAI-compatible stand-in for a GPU backend (demo, tests, benchmarks)."""

LABEL = "simulated model server (stands in for a GPU backend)"

# The headers of every streamed answer (chat, legacy completions and the Responses API)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
