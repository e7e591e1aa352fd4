"""A backend whose ``api_key_file`` cannot be read (at start-up; a reload is refused now) answered every request
routed to it with 500 internal_error and a traceback in the log (``Upstream.plan`` raised the ConfigError on
the request path) until its health checks took it out of rotation, and the request was not retried on another
backend. Now the attempt fails like an unreachable backend's: retried elsewhere while the retry budget lasts,
else 502."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.support.harness import gateway_config, running_gateway, sim_backend


async def test_an_unreadable_backend_key_file_is_not_a_500(tmp_path: Path) -> None:
    async with sim_backend() as good, sim_backend() as other:
        cfg = gateway_config(other.url, good.url)
        cfg["models"][0]["backends"][0]["api_key_file"] = str(tmp_path / "missing")
        async with running_gateway(cfg) as gw:
            statuses = []
            for i in range(8):  # sticky per client: several clients reach b0
                c = gw.openai_client(f"client-{i}")
                try:
                    await c.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}],
                                                    max_tokens=2)
                    statuses.append(200)
                except openai.APIStatusError as e:
                    statuses.append(e.status_code)
                finally:
                    await c.close()
    assert 500 not in statuses, statuses  # before: 500 internal_error (a ConfigError on the request path)
    assert set(statuses) <= {200, 502, 503}, statuses
