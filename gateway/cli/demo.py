"""``ipgate demo``: the whole thing on one machine, one command.

Starts the simulated model servers (stand-ins for GPU backends) named in the embedded demo configuration
(``gateway/cli/demo.yaml``, the same as ``config/demo.yaml``), creates the secrets that are not set
(JWT signing secret, watermark secret, admin token: random, for this run only), starts the gateway, mints a
client token and prints a ready-to-paste ``curl`` and ``openai`` example. Runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import sys
from importlib import resources
from urllib.parse import urlsplit

import yaml

from gateway.config import GatewayConfig, parse_config
from gateway.sim import LABEL

log = logging.getLogger(__name__)

SECRETS = ("IPGATE_JWT_SECRET", "IPGATE_WATERMARK_SECRET", "IPGATE_ADMIN_TOKEN")


def demo_config(port: int | None = None, admin_port: int | None = None,
                sim_ports: list[int] | None = None) -> GatewayConfig:
    data = yaml.safe_load(resources.files("gateway.cli").joinpath("demo.yaml").read_text(encoding="utf-8"))
    if port is not None:
        data["listen"] = f"127.0.0.1:{port}"
    if admin_port is not None:
        data["admin_listen"] = f"127.0.0.1:{admin_port}"
    backends = data["models"][0]["backends"]
    for b, p in zip(backends, sim_ports or [], strict=False):
        b["url"] = f"http://127.0.0.1:{p}"
    return parse_config(data, source="gateway/cli/demo.yaml")


def _ports(text: str) -> list[int]:
    try:
        ports = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PORT,PORT, got {text!r}") from None
    if len(ports) != 2 or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"expected two ports PORT,PORT, got {text!r}")
    return ports


def _port(text: str) -> int:
    """A listening port (an out-of-range one was an "internal error: ConfigError" from the demo's config)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port, got {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port in 1-65535, got {text!r}")
    return port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the gateway in front of simulated model servers, print examples")
    p.add_argument("--port", type=_port, default=None, help="public port (default 8080)")
    p.add_argument("--admin-port", type=_port, default=None, help="admin port (default 9090)")
    p.add_argument("--sim-ports", type=_ports, default=None,
                   help="ports of the two simulated backends (default 18000,18010)")
    p.add_argument("--client", default="demo-client", help="client id of the printed token")
    p.set_defaults(func=run)


def _examples(url: str, token: str, admin_url: str, admin_token: str) -> str:
    # the interpreter running the demo: `make demo` installs the openai client into it (the `demo` extra)
    python = shlex.quote(sys.executable or "python3")
    return f"""
ipgate demo is running (backends: {LABEL}).

  curl -s {url}/v1/chat/completions \\
    -H "Authorization: Bearer {token}" -H "Content-Type: application/json" \\
    -d '{{"model": "sim", "messages": [{{"role": "user", "content": "What does a reverse proxy do?"}}]}}'

  {python} - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{token}")
for chunk in client.chat.completions.create(model="sim", stream=True,
        messages=[{{"role": "user", "content": "What does a reverse proxy do?"}}]):
    print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="", flush=True)
print()
print(client.responses.create(model="sim", input="What does a canary rollout do?").output_text)
PY

  metrics:   curl -s {admin_url}/metrics
  dashboard: {admin_url}/admin/dashboard#token={admin_token}
Ctrl-C stops everything.
"""


async def _main(cfg: GatewayConfig, client: str) -> int:
    from gateway.cli.token import mint
    from gateway.server import claim_listen_ports, run_worker
    from gateway.sim.run import start_sim
    from gateway.sim.server import SimOptions

    # The gateway's ports first, as `ipgate serve` claims them before anything binds: a taken one is the only
    # thing said, with no simulated backend started (and logged as listening) for a gateway that cannot start
    ports = claim_listen_ports(cfg)
    runners = []
    try:
        for m in cfg.models:
            for b in m.backends:
                u = urlsplit(b.url)
                r, _ = await start_sim(SimOptions(model=m.name, tokens_per_s=40, latency_ms=50),
                                       u.hostname or "127.0.0.1", u.port or 80)
                runners.append(r)
        if cfg.auth.jwt is None:
            raise SystemExit("the demo configuration needs auth.jwt")
        token = mint(cfg.auth.jwt, client=client, ttl_s=24 * 3600)
        host, port = cfg.listen_addr
        ahost, aport = cfg.admin_addr
        text = _examples(f"http://{host}:{port}", token, f"http://{ahost}:{aport}", os.environ["IPGATE_ADMIN_TOKEN"])
        return await run_worker(None, cfg, on_ready=lambda: print(text, flush=True), claim=False)
    finally:
        for r in runners:
            await r.cleanup()
        ports.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in SECRETS:
        if not os.environ.get(name):
            os.environ[name] = secrets.token_urlsafe(32)
            log.info("%s was not set: generated a random one for this run", name)
    cfg = demo_config(args.port, args.admin_port, args.sim_ports)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_main(cfg, args.client))
    except OSError as e:  # a port is taken: the gateway's (PortInUse names it) or a simulated backend's
        print(f"ipgate demo: cannot listen: {e.strerror or e} (choose others with --port, --admin-port, "
              "--sim-ports)", file=sys.stderr)
        return 2
    return 0
