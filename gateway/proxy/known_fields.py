"""The request fields each endpoint knows: what ``proxy.unknown_fields: refuse`` lets through (plain data).

Two kinds, per endpoint, both top-level keys of the JSON body:

- ``OPENAI_FIELDS``: the parameters of OpenAI's API reference for that endpoint. They follow the official
  ``openai`` Python SDK **v3.57.0** (generated from OpenAI's OpenAPI spec; read 2026-11-27): every keyword of
  ``client.chat.completions.create``, ``client.completions.create``, ``client.embeddings.create`` and
  ``client.responses.create`` but the SDK's own ``extra_*``/``timeout``. Deprecated parameters the SDK still
  sends (``functions``, ``function_call``, ``max_tokens``) are in. A field the gateway refuses by value
  (the Responses API's ``background: true``, ``previous_response_id``, ``conversation``, ``prompt``) is in
  too: the parse step refuses it with its own reason, which says more than "unknown" (so are vLLM's
  ``enable_response_messages`` and ``previous_input_messages`` among the extensions). A newer SDK adds
  parameters: ``tests/gateway/test_field_allowlist.py`` compares these sets with the installed SDK, and an
  operator adds a parameter before the next release in ``proxy.allowed_fields``.
- ``ENGINE_FIELDS``: inference-server extensions (vLLM 0.33, SGLang) known to be the client's to use behind
  this gateway: sampling knobs (``top_k``, ``min_p``, ``repetition_penalty``, ...), the token-id extensions the
  parse step validates and the hardening caps (``logprob_token_ids``, ``allowed_token_ids``, ``bad_words``,
  ``prompt_logprobs``, ``best_of``), the structured-output fields the watermark treats as constraints
  (``gateway/watermarking.py: CONSTRAINT_FIELDS``), ``cache_salt`` (replaced by the gateway's own salt when a
  backend sets one), ``return_token_ids`` (withheld with the watermark) and ``chat_template_kwargs`` (its
  ``chat_template`` key stays on the block list).

Deliberately absent, so refused in ``refuse`` mode (add them to ``proxy.allowed_fields`` to let them through):
extensions that change *what the model reads* rather than how it samples (``documents``, rendered into the
prompt by the chat template where detection never reads them; ``add_generation_prompt`` and
``continue_final_message``, which move where a reasoning model's ``<think>`` section starts and so what
``strip_reasoning`` can find; ``mm_processor_kwargs``), server-side code by name (``logits_processors``),
output-decoding switches that show the tokenizer's internals (``skip_special_tokens``,
``spaces_between_special_tokens``, ``return_tokens_as_token_ids``), and the fields the gateway sets itself
and strips from clients (``vllm_xargs``, ``watermarking``). Everything on the block list
(``gateway/proxy/fields.py: REFUSED_FIELDS``) is refused in both modes whatever these sets say.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from gateway.proxy.parse import Endpoint

# --- OpenAI API reference (openai-python v3.57.0) ------------------------------------------------------------

CHAT_OPENAI: Final[frozenset[str]] = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store",
    "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options",
})
COMPLETIONS_OPENAI: Final[frozenset[str]] = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
})
EMBEDDINGS_OPENAI: Final[frozenset[str]] = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
RESPONSES_OPENAI: Final[frozenset[str]] = frozenset({
    "model", "input", "access_programs", "background", "background_options", "context_management",
    "conversation", "image", "include", "instructions", "max_output_tokens", "max_tool_calls", "metadata",
    "moderation", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_options", "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store",
    "stream", "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "user",
})

# --- inference-server extensions known to be safe for clients (vLLM 0.33, SGLang) ---------------------------

# How tokens are drawn, never what the model reads: vLLM's "sampling params" of chat and completions
SAMPLING_EXTRAS: Final[frozenset[str]] = frozenset({
    "top_k", "min_p", "repetition_penalty", "length_penalty", "use_beam_search", "min_tokens", "ignore_eos",
    "stop_token_ids", "include_stop_str_in_output", "truncate_prompt_tokens",
    # validated by the parse step (types, bounds) and capped by the tier hardening
    "best_of", "prompt_logprobs", "logprob_token_ids", "allowed_token_ids", "bad_words",
})
# Structured output: vLLM (structured_outputs; guided_* before 0.10.2), SGLang (regex, ebnf, json_schema),
# llama.cpp (grammar, json_schema). The gateway knows each one: such answers skip the post-hoc watermark and
# tiers with refuse_unwatermarkable answer 403 naming the field (gateway/watermarking.py).
CONSTRAINT_EXTRAS: Final[frozenset[str]] = frozenset({
    "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "regex", "ebnf",
    "json_schema", "grammar",
})
# The gateway handles each: cache_salt (replaced per backend.cache_salt), return_token_ids (token ids withheld
# from watermarked choices), chat_template_kwargs (.chat_template refused), include_reasoning (less output)
CHAT_EXTRAS: Final[frozenset[str]] = SAMPLING_EXTRAS | CONSTRAINT_EXTRAS | frozenset({
    "cache_salt", "return_token_ids", "chat_template_kwargs", "include_reasoning",
})
# vLLM takes response_format on completions too (the watermark reads it there as a constraint)
COMPLETIONS_EXTRAS: Final[frozenset[str]] = SAMPLING_EXTRAS | CONSTRAINT_EXTRAS | frozenset({
    "cache_salt", "return_token_ids", "response_format",
})
EMBEDDINGS_EXTRAS: Final[frozenset[str]] = frozenset({"truncate_prompt_tokens"})
# vLLM 0.33's ResponsesRequest: seed and logit_bias (hardened as for chat), its sampling knobs, cache_salt,
# structured_outputs (a constraint there too); enable_response_messages and previous_input_messages are
# refused by value in gateway/proxy/responses_request.py (only their defaults pass, as clients send them)
RESPONSES_EXTRAS: Final[frozenset[str]] = frozenset({
    "seed", "logit_bias", "top_k", "min_p", "repetition_penalty", "cache_salt", "structured_outputs",
    "enable_response_messages", "previous_input_messages",
})

OPENAI_FIELDS: Final[Mapping[Endpoint, frozenset[str]]] = MappingProxyType({
    "chat": CHAT_OPENAI, "completions": COMPLETIONS_OPENAI, "embeddings": EMBEDDINGS_OPENAI,
    "responses": RESPONSES_OPENAI,
})
ENGINE_FIELDS: Final[Mapping[Endpoint, frozenset[str]]] = MappingProxyType({
    "chat": CHAT_EXTRAS, "completions": COMPLETIONS_EXTRAS, "embeddings": EMBEDDINGS_EXTRAS,
    "responses": RESPONSES_EXTRAS,
})
# the API path each endpoint answers on, for the 400's message
PATHS: Final[Mapping[Endpoint, str]] = MappingProxyType({
    "chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
    "responses": "/v1/responses",
})


def known_fields(endpoint: Endpoint, allowed: frozenset[str] = frozenset()) -> frozenset[str]:
    """Every top-level request field ``endpoint`` lets through in ``refuse`` mode (the block list aside)."""
    return OPENAI_FIELDS[endpoint] | ENGINE_FIELDS[endpoint] | allowed
