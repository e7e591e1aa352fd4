"""The proxy's moving parts: request parsing, SSE framing, upstream forwarding and usage accounting."""
