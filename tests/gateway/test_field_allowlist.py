"""Allowlist mode for request fields (``proxy.unknown_fields: refuse``, ``proxy.allowed_fields``;
gateway/proxy/known_fields.py, gateway/proxy/fields.py). Table-driven unit tests of the check, the field sets
against the installed openai SDK, config validation, ``ipgate check``, reload, and end to end: the real gateway
in front of the bundled simulated vLLM (a real aiohttp server) with the official openai client."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import openai
import pytest
from multidict import CIMultiDict
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry

from gateway.admin.routing import reload_from_config
from gateway.config import ConfigError, ProxyConfig, parse_config
from gateway.errors import InvalidRequest
from gateway.preflight import offline
from gateway.proxy.field_catalogue import REFUSED_FIELDS
from gateway.proxy.fields import LOGGED_UNKNOWN, UNKNOWN_LABEL, FieldPolicy, allowlist_problems
from gateway.proxy.known_fields import ENGINE_FIELDS, OPENAI_FIELDS, PATHS, known_fields
from gateway.proxy.parse import Endpoint
from gateway.telemetry.metrics import Metrics
from gateway.watermarking import CONSTRAINT_FIELDS
from tests.support.harness import GatewayHandle, gateway_config, running_gateway, sim_backend

MODELS = [{"name": "m", "backends": [{"name": "b", "url": "http://127.0.0.1:9"}]}]
MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about rivers."}]
METRIC = "ipgate_request_fields_refused_total"
# the minimal valid body of each endpoint
BASE: dict[Endpoint, dict[str, Any]] = {
    "chat": {"model": "m", "messages": MSGS}, "completions": {"model": "m", "prompt": "hi"},
    "embeddings": {"model": "m", "input": "hi"}, "responses": {"model": "m", "input": "hi"},
}


def _policy(**proxy: Any) -> tuple[FieldPolicy, Metrics]:
    cfg = parse_config({"models": MODELS, "proxy": {"unknown_fields": "refuse", **proxy}}, env={}).proxy
    m = Metrics(CollectorRegistry())
    return FieldPolicy(cfg.refused_fields, cfg.refused_headers, cfg.withheld_response_fields,
                       unknown=cfg.unknown_fields, allowed=cfg.allowed_fields,
                       refused_metric=m.request_fields_refused_total), m


def _count(m: Metrics, label: str) -> float:
    return m.registry.get_sample_value(METRIC, {"field": label}) or 0.0


# --- the check ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "extra", "refused"), [
    # chat: OpenAI parameters the SDK sends, and the engine extras known to be safe
    ("chat", {"stream": True, "stream_options": {"include_usage": True}, "parallel_tool_calls": True,
              "service_tier": "auto", "store": False, "metadata": {"a": "b"}, "modalities": ["text"],
              "reasoning_effort": "low", "verbosity": "low", "prompt_cache_key": "k", "safety_identifier": "s",
              "user": "u", "prediction": {"type": "content", "content": "x"}, "web_search_options": {},
              "audio": None, "max_completion_tokens": 5}, None),
    ("chat", {"top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1, "structured_outputs": {"regex": "a+"},
              "chat_template_kwargs": {"enable_thinking": False}, "cache_salt": "s", "return_token_ids": True,
              "logprob_token_ids": [1], "bad_words": ["x"], "guided_json": {}, "min_tokens": 2}, None),
    ("chat", {"x_new_engine_field": 1}, "x_new_engine_field"),
    ("chat", {"temperature": 0.5, "x_new_engine_field": 0, "y_other": 1}, "x_new_engine_field"),  # first, in order
    ("chat", {"x_new_engine_field": False}, "x_new_engine_field"),  # false is a value here (default unknown)
    ("chat", {"x_new_engine_field": None}, None),  # null: the server's default, as for the block list
    ("chat", {"my_ext": {"on": True}}, None),  # proxy.allowed_fields
    ("chat", {"documents": [{"title": "t", "text": "unseen by detection"}]}, "documents"),
    ("chat", {"add_generation_prompt": False}, "add_generation_prompt"),  # moves where <think> starts
    ("chat", {"logits_processors": ["evil.Proc"]}, "logits_processors"),
    ("chat", {"vllm_xargs": {"a": 1}}, "vllm_xargs"),  # the gateway's own channel: refused, not silently stripped
    ("chat", {"input": "hi"}, "input"),  # a Responses API parameter on chat
    ("chat", {"Temperature": 1}, "Temperature"),  # names are case-sensitive, as the backends read them
    # completions
    ("completions", {"suffix": "s", "echo": True, "best_of": 2, "logprobs": 1, "response_format": None,
                     "top_k": 5, "guided_regex": "a"}, None),
    ("completions", {"messages": MSGS}, "messages"),
    ("completions", {"max_completion_tokens": 5}, "max_completion_tokens"),  # a chat parameter
    # embeddings
    ("embeddings", {"dimensions": 8, "encoding_format": "base64", "user": "u", "truncate_prompt_tokens": 4}, None),
    ("embeddings", {"temperature": 0.1}, "temperature"),
    # responses
    ("responses", {"instructions": "be brief", "max_output_tokens": 9, "text": {"format": {"type": "text"}},
                   "store": False, "truncation": "auto", "include": [], "reasoning": {"effort": "low"},
                   "seed": 3, "top_k": 2, "stream_options": None, "context_management": None}, None),
    ("responses", {"enable_response_messages": False, "previous_input_messages": None}, None),  # parse refuses
    ("responses", {"messages": MSGS}, "messages"),                                            # other values
    ("responses", {"max_tokens": 9}, "max_tokens"),  # chat's name for max_output_tokens
])
def test_unknown_field_check(endpoint: Endpoint, extra: dict[str, Any], refused: str | None) -> None:
    policy, m = _policy(allowed_fields=["my_ext"])
    body = {**BASE[endpoint], **extra}
    if refused is None:
        policy.check(body, CIMultiDict(), endpoint)
        assert _count(m, UNKNOWN_LABEL) == 0
        return
    with pytest.raises(InvalidRequest) as e:
        policy.check(body, CIMultiDict(), endpoint)
    err = e.value
    assert (err.status, err.param, err.code) == (400, refused, "field_not_accepted")
    assert err.message.startswith(f"{refused}: not accepted by this gateway (unknown field")
    assert PATHS[endpoint] in err.message and "proxy.unknown_fields" in err.message
    assert err.body()["error"]["type"] == "invalid_request_error"  # the shape every refusal has
    assert _count(m, UNKNOWN_LABEL) == 1 and _count(m, refused) == 0


def test_pass_mode_lets_unknown_fields_through() -> None:
    policy, m = _policy(unknown_fields="pass", allowed_fields=["my_ext"])
    for endpoint, base in BASE.items():
        policy.check({**base, "x_new_engine_field": 1, "documents": []}, CIMultiDict(), endpoint)
    policy.check({**BASE["chat"], "x_new_engine_field": 1})  # endpoint is not needed in pass mode
    assert _count(m, UNKNOWN_LABEL) == 0


@pytest.mark.parametrize("mode", ["pass", "refuse"])
def test_the_block_list_wins_in_both_modes(mode: str) -> None:
    """A refused field listed in allowed_fields stays refused, with its own reason, and it is named first
    even when an unknown field comes before it in the body."""
    policy, m = _policy(unknown_fields=mode, allowed_fields=["priority"])
    with pytest.raises(InvalidRequest) as e:
        policy.check({**BASE["chat"], "x_new_engine_field": 1, "priority": -5}, CIMultiDict(), "chat")
    assert e.value.param == "priority" and "proxy.refused_fields" in e.value.message
    assert _count(m, "priority") == 1 and _count(m, UNKNOWN_LABEL) == 0
    with pytest.raises(InvalidRequest) as e:  # a dotted entry: its parent is a known field
        policy.check({**BASE["chat"], "chat_template_kwargs": {"chat_template": "{{ x }}"}}, None, "chat")
    assert e.value.param == "chat_template_kwargs.chat_template"
    with pytest.raises(InvalidRequest, match="x-vllm-priority"):
        policy.check(BASE["chat"], CIMultiDict({"X-Vllm-Priority": "1"}), "chat")


def test_unknown_names_share_one_metric_label() -> None:
    """The names are the client's: 200 distinct ones are 200 counts on one series, not 200 series."""
    policy, m = _policy()
    for i in range(200):
        with pytest.raises(InvalidRequest):
            policy.check({**BASE["chat"], f"probe_{i}": 1}, None, "chat")
    assert _count(m, UNKNOWN_LABEL) == 200
    series = [s for metric in m.registry.collect() if metric.name == METRIC.removesuffix("_total")
              for s in metric.samples if s.name == METRIC]
    assert [s.labels for s in series] == [{"field": UNKNOWN_LABEL}]


def test_logged_once_per_name_for_the_first_names_only(caplog: pytest.LogCaptureFixture) -> None:
    policy, _ = _policy()
    caplog.set_level(logging.WARNING, logger="gateway.proxy.fields")
    for i in [0, 0, 0, *range(1, LOGGED_UNKNOWN + 20)]:
        with pytest.raises(InvalidRequest):
            policy.check({**BASE["chat"], f"probe_{i}": 1}, None, "chat")
    lines = [r.getMessage() for r in caplog.records if "unknown request field" in r.getMessage()]
    assert len(lines) == LOGGED_UNKNOWN and sum("'probe_0'" in x for x in lines) == 1


def test_a_long_name_is_echoed_shortened() -> None:
    policy, _ = _policy()
    name = "x" * 5000
    with pytest.raises(InvalidRequest) as e:
        policy.check({**BASE["chat"], name: 1}, None, "chat")
    assert e.value.param == "x" * 64 + "..." and len(e.value.message) < 300


def test_refuse_mode_needs_the_endpoint() -> None:
    """A caller that forgot the endpoint must fail loudly, not turn the allowlist off."""
    policy, _ = _policy()
    with pytest.raises(TypeError, match="endpoint"):
        policy.check({**BASE["chat"], "x_new_engine_field": 1})


# --- the field sets -------------------------------------------------------------------------------------------

def _sdk_parameters() -> dict[Endpoint, set[str]]:
    from openai.resources.chat.completions import AsyncCompletions as Chat
    from openai.resources.completions import AsyncCompletions
    from openai.resources.embeddings import AsyncEmbeddings
    from openai.resources.responses import AsyncResponses

    sdk_own = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
    methods: dict[Endpoint, Any] = {"chat": Chat.create, "completions": AsyncCompletions.create,
                                    "embeddings": AsyncEmbeddings.create, "responses": AsyncResponses.create}
    return {ep: set(inspect.signature(fn).parameters) - sdk_own for ep, fn in methods.items()}


@pytest.mark.parametrize("endpoint", list(PATHS))
def test_every_parameter_of_the_installed_openai_sdk_is_known(endpoint: Endpoint) -> None:
    """Fails when a newer openai SDK adds a parameter: refuse mode would break that client. Add it to
    OPENAI_FIELDS (and the SDK version in the module's docstring)."""
    missing = _sdk_parameters()[endpoint] - OPENAI_FIELDS[endpoint]
    assert not missing, f"openai {openai.__version__} sends {sorted(missing)} on {PATHS[endpoint]}"


def test_what_the_gateway_acts_on_is_known_and_nothing_known_is_blocked() -> None:
    """The constraint fields the watermark reads and the extensions the parse step validates are known where
    they apply; no known field is on the default block list (a contradiction in the data itself)."""
    assert set(CONSTRAINT_FIELDS) <= ENGINE_FIELDS["chat"] and set(CONSTRAINT_FIELDS) <= ENGINE_FIELDS["completions"]
    for ep in ("chat", "completions"):
        assert {"logprob_token_ids", "allowed_token_ids", "bad_words", "best_of", "prompt_logprobs"} <= known_fields(ep)
    blocked = {n for n in REFUSED_FIELDS if "." not in n}
    for ep in PATHS:
        assert not known_fields(ep) & blocked, ep
        assert isinstance(OPENAI_FIELDS[ep], frozenset) and isinstance(ENGINE_FIELDS[ep], frozenset)


# --- configuration, ipgate check, reload -----------------------------------------------------------------------

@pytest.mark.parametrize(("proxy", "problem"), [
    ({"unknown_fields": "deny"}, "unknown_fields"),
    ({"allowed_fields": ["a.b"]}, "not a field name"),
    ({"allowed_fields": ["bad name"]}, "not a field name"),
    ({"allowed_fields": ["x", "x"]}, "more than once"),
])
def test_config_validation_names_the_field(proxy: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match="proxy") as e:
        parse_config({"models": MODELS, "proxy": proxy}, source="t.yaml", env={})
    assert problem in str(e.value)


def test_defaults_keep_the_drop_in_proxy() -> None:
    cfg = ProxyConfig()
    assert cfg.unknown_fields == "pass" and cfg.allowed_fields == []


def _proxy_warnings(proxy: dict[str, Any]) -> list[str]:
    cfg = parse_config({"models": MODELS, "proxy": proxy}, env={})
    return [f.message for f in offline(cfg, env={}) if f.area == "proxy" and f.level == "warning"]


def test_ipgate_check_warns_about_allowlist_contradictions() -> None:
    assert _proxy_warnings({"unknown_fields": "refuse", "allowed_fields": ["my_ext"]}) == []
    [w] = _proxy_warnings({"unknown_fields": "refuse", "allowed_fields": ["my_ext", "kv_transfer_params"]})
    assert "'kv_transfer_params'" in w and "block list wins" in w and "refused" in w
    [w] = _proxy_warnings({"unknown_fields": "pass", "allowed_fields": ["my_ext"]})
    assert "no effect" in w and "pass" in w
    [w] = _proxy_warnings({"unknown_fields": "refuse", "allowed_fields": ["model"]})
    assert "'model'" in w and "no effect" in w
    ok = [f.message for f in offline(parse_config({"models": MODELS, "proxy": {"unknown_fields": "refuse"}},
                                                  env={}), env={}) if f.area == "proxy" and f.level == "ok"]
    assert any("unknown request fields refuse" in x for x in ok)
    assert allowlist_problems("refuse", ["a", "b"], ["b"]) == [
        "proxy.allowed_fields lists 'b', which proxy.refused_fields also lists: the block list wins and 'b' is "
        "refused (remove it from one of the two)"]


async def test_reload_names_proxy_in_restart_required_and_keeps_the_running_policy() -> None:
    """As the rest of the proxy section: read at start-up; a SIGHUP reload names it and changes nothing."""
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url)) as gw:
        new = gw.ctx.config.model_copy(update={"proxy": ProxyConfig(unknown_fields="refuse")})
        result = reload_from_config(gw.ctx, new)
        assert result["restart_required"] == ["proxy"]
        assert gw.ctx.fields.unknown == "pass" and gw.ctx.config.proxy.unknown_fields == "pass"
        client = gw.openai_client("alice")
        try:
            await client.chat.completions.create(model="sim", messages=MSGS, extra_body={"x_new_engine_field": 1})
        finally:
            await client.close()
        assert sim.stats.last_body["x_new_engine_field"] == 1


# --- end to end: the official openai client through the real gateway --------------------------------------------

def _refused_unknown(gw: GatewayHandle) -> float:
    return gw.ctx.metrics.registry.get_sample_value(METRIC, {"field": UNKNOWN_LABEL}) or 0.0


async def test_official_client_works_in_refuse_mode() -> None:
    """Every endpoint, streamed and not, with the parameters current SDK users pass; then an unknown extension
    is refused before the backend, an allowed one reaches it, and the block list still applies."""
    cfg = gateway_config(proxy={"unknown_fields": "refuse", "allowed_fields": ["x_operator_field"]})
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, proxy=cfg["proxy"])) as gw:
        client = gw.openai_client("alice")
        common: dict[str, Any] = {"user": "u-1", "metadata": {"app": "t"}, "store": False,
                                  "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "s"}
        try:
            r = await client.chat.completions.create(
                model="sim", messages=MSGS, max_completion_tokens=8, temperature=0.3, top_p=0.9, seed=1, n=1,
                stop=["\n\n"], presence_penalty=0.1, frequency_penalty=0.1, reasoning_effort="low",
                verbosity="low", modalities=["text"], parallel_tool_calls=True,
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                tool_choice="none", extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05},
                **common)
            assert r.choices[0].message.content
            chunks = [c async for c in await client.chat.completions.create(
                model="sim", messages=MSGS, max_tokens=8, stream=True, stream_options={"include_usage": True},
                logprobs=True, top_logprobs=2, **common)]
            assert chunks[-1].usage is not None and any(c.choices and c.choices[0].delta.content for c in chunks)
            c = await client.completions.create(model="sim", prompt="Once", max_tokens=8, echo=False, best_of=1,
                                                logprobs=1, user="u-1")
            assert c.choices[0].text
            texts = [x.choices[0].text async for x in await client.completions.create(
                model="sim", prompt="Once", max_tokens=8, stream=True, stream_options={"include_usage": True})
                if x.choices]
            assert "".join(texts)
            e = await client.embeddings.create(model="sim", input=["a", "b"], user="u-1")  # SDK sends base64
            assert len(e.data) == 2 and e.data[0].embedding
            resp = await client.responses.create(
                model="sim", input="Tell me about rivers.", instructions="Be brief.", max_output_tokens=16,
                temperature=0.3, top_p=0.9, truncation="disabled", reasoning={"effort": "low"},
                text={"format": {"type": "text"}}, **common)
            assert resp.output_text
            events = [ev.type async for ev in await client.responses.create(
                model="sim", input="Tell me about rivers.", stream=True, **common)]
            assert events[-1] == "response.completed"
            seen = sim.stats.requests
            assert _refused_unknown(gw) == 0

            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model="sim", messages=MSGS,
                                                     extra_body={"x_new_engine_field": 1})
            body = err.value.body
            assert isinstance(body, dict) and body["param"] == "x_new_engine_field"
            assert body["code"] == "field_not_accepted" and "/v1/chat/completions" in body["message"]
            with pytest.raises(openai.BadRequestError, match="x_new_engine_field"):
                await client.responses.create(model="sim", input="hi", stream=True,
                                              extra_body={"x_new_engine_field": 1})
            with pytest.raises(openai.BadRequestError, match=r"proxy\.refused_fields"):
                await client.completions.create(model="sim", prompt="hi", extra_body={"kv_transfer_params": {}})
            assert sim.stats.requests == seen  # refused before the backend
            assert _refused_unknown(gw) == 2

            r = await client.chat.completions.create(model="sim", messages=MSGS,
                                                     extra_body={"x_operator_field": {"k": 1}})
            assert r.choices[0].message.content and sim.stats.last_body["x_operator_field"] == {"k": 1}
        finally:
            await client.close()


def test_log_mode_is_a_dry_run_of_refuse(caplog: pytest.LogCaptureFixture) -> None:
    """``log``: what refuse would answer 400 passes, counted once per request and logged once per name; the
    block list still refuses."""
    cfg = parse_config({"models": MODELS, "proxy": {"unknown_fields": "log"}}, env={}).proxy
    m = Metrics(CollectorRegistry())
    policy = FieldPolicy(cfg.refused_fields, cfg.refused_headers, cfg.withheld_response_fields,
                         unknown=cfg.unknown_fields, allowed=cfg.allowed_fields,
                         refused_metric=m.request_fields_refused_total, unknown_metric=m.request_fields_unknown_total)
    caplog.set_level(logging.WARNING, logger="gateway.proxy.fields")
    for _ in range(3):
        policy.check({**BASE["chat"], "x_new_engine_field": 1, "y_other": 2}, CIMultiDict(), "chat")
    policy.check(BASE["chat"], CIMultiDict(), "chat")  # nothing unknown: not counted
    assert m.registry.get_sample_value("ipgate_request_fields_unknown_total") == 3
    assert _count(m, UNKNOWN_LABEL) == 0
    lines = [r.getMessage() for r in caplog.records if "passed the unknown request field" in r.getMessage()]
    assert len(lines) == 1 and "'x_new_engine_field'" in lines[0] and "proxy.unknown_fields: log" in lines[0]
    with pytest.raises(InvalidRequest, match=r"proxy\.refused_fields"):
        policy.check({**BASE["chat"], "kv_transfer_params": {}}, CIMultiDict(), "chat")


async def test_log_mode_passes_unknown_fields_to_the_backend() -> None:
    async with sim_backend() as sim, running_gateway(gateway_config(sim.url, proxy={"unknown_fields": "log"})) as gw:
        client = gw.openai_client("alice")
        try:
            r = await client.chat.completions.create(model="sim", messages=MSGS,
                                                     extra_body={"x_new_engine_field": 1})
            assert r.choices[0].message.content and sim.stats.last_body["x_new_engine_field"] == 1
        finally:
            await client.close()
        assert gw.ctx.metrics.registry.get_sample_value("ipgate_request_fields_unknown_total") == 1
