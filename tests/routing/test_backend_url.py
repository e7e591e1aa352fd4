"""A backend ``url`` may be written with or without its ``/v1`` (``http(s)://host[:port][/v1]``): every user of
the URL — forwarding, the active health check, the KGW probe, fingerprint probes — must reach the same paths."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config import BackendConfig
from gateway.sim.server import build_sim_app
from tests.support.harness import app_backend, eventually, gateway_config, running_gateway


@pytest.mark.parametrize(("url", "root"), [
    ("http://gpu-1:8000", "http://gpu-1:8000"),
    ("http://gpu-1:8000/", "http://gpu-1:8000"),
    ("http://gpu-1:8000/v1", "http://gpu-1:8000"),
    ("http://gpu-1:8000/v1/", "http://gpu-1:8000"),
    ("https://api.example.com/openai/v1", "https://api.example.com/openai"),
    ("https://api.example.com/openai", "https://api.example.com/openai"),
    ("http://gpu-1:8000/v10", "http://gpu-1:8000/v10"),  # only a whole /v1 segment is dropped
])
def test_the_url_is_kept_as_the_root_the_openai_paths_hang_off(url: str, root: str) -> None:
    assert BackendConfig(name="b", url=url).url == root


async def test_a_backend_written_with_v1_passes_its_health_checks_and_serves() -> None:
    """Its health check used to go to /v1/v1/models: a 404 every round, so the backend was marked down after
    ``failure_threshold`` rounds and every request got a 503 while the backend was fine."""
    health_checks: list[str] = []  # the path of every GET the backend received

    @web.middleware
    async def count_gets(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET":
            health_checks.append(request.path)
        return await handler(request)

    app = build_sim_app()
    app.middlewares.append(count_gets)
    async with app_backend(app) as url:
        cfg = gateway_config(url + "/v1/", routing={"health": {"interval_s": 0.05, "failure_threshold": 1}})
        async with running_gateway(cfg) as gw:
            client = gw.openai_client("alice")
            try:
                await eventually(lambda: len(health_checks) >= 3, what="three health rounds")
                (backend,) = gw.ctx.router.snapshot()["models"]["sim"]["backends"]
                assert backend["status"] == "healthy" and backend["url"] == url, backend
                assert set(health_checks) == {"/v1/models"}, health_checks
                r = await client.chat.completions.create(
                    model="sim", messages=[{"role": "user", "content": "hello"}], max_tokens=8)
                assert r.choices[0].message.content
            finally:
                await client.close()


@pytest.mark.parametrize("path", ["health", "v1/models", "/he alth", "/x#frag"])
def test_a_health_path_that_would_not_be_a_path_on_the_backend_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="health_path"):
        BackendConfig(name="b", url="http://gpu-1:8000", health_path=path)
    assert BackendConfig(name="b", url="http://gpu-1:8000", health_path="/health").health_path == "/health"
