"""The emulated KGW plugin of a simulated server started with ``kgw_plugin``: a plugin-loaded vLLM's verdict
on a request's ``vllm_xargs``, given by the plugin's own validator. Nothing is applied to the text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.sim import checks
from gateway.sim.state import SimOptions


def refusal(opts: SimOptions, body: Mapping[str, Any]) -> web.Response | None:
    """The emulated plugin's verdict on the request's ``vllm_xargs``: None to serve it, else vLLM's 400."""
    from watermark.kgw.directives import parse_spec
    from watermark.kgw.params import KgwParams
    from watermark.kgw.vllm_plugin import validate_extra_args

    bad_xargs = checks.check_xargs(body)  # vLLM's schema refuses a non-object before any plugin sees it
    if bad_xargs is not None:
        return bad_xargs
    try:
        validate_extra_args(body.get("vllm_xargs"), parse_spec(opts.kgw_spec) if opts.kgw_spec else KgwParams(),
                            opts.kgw_secret)
    except ValueError as e:
        # vLLM's shape for a ValueError raised while the request is processed (create_error_response)
        return web.json_response({"error": {"message": str(e), "type": "BadRequestError", "param": None,
                                            "code": 400}}, status=400)
    return None
