"""The default lists of ``proxy`` in the config, and why each entry is on them: plain data.

``REFUSED_FIELDS`` and ``REFUSED_HEADERS`` (refused in requests, with the reason the 400 gives),
``WITHHELD_RESPONSE_FIELDS`` (removed from answers), the Responses API object's own fields (never withheld
there) and the ``REQUIRED_*`` sets that no configuration may refuse or withhold (the config rejects them).
``gateway.proxy.fields.FieldPolicy`` applies the configured lists; ``gateway/proxy/known_fields.py`` holds the
fields each endpoint knows, for ``proxy.unknown_fields: refuse``.
"""

from __future__ import annotations

_ENGINE = "engine-internal field"
_DETECTION = "the model would read a prompt detection never saw"

# Request fields refused by default, with the reason the 400 gives. Why each one:
REFUSED_FIELDS: dict[str, str] = {
    # vLLM 0.33 (chat, completions, responses). Set by the prefill/decode router, never by a client: a client
    # value names remote engines and KV blocks for the decode node to pull (reading or poisoning another
    # request's cache, connections the operator never configured).
    "kv_transfer_params": f"{_ENGINE}: disaggregated-serving KV-cache transfer",
    "ec_transfer_params": f"{_ENGINE}: disaggregated-serving encoder-cache transfer",
    # vLLM: a client Jinja template replaces the deployment's (and its system text); detection scores the
    # messages, the template decides what the model reads. vLLM itself refuses both unless started with
    # --trust-request-chat-template; the nested form is the same template under another key.
    "chat_template": f"a client chat template: {_DETECTION}",
    "chat_template_kwargs.chat_template": f"a client chat template: {_DETECTION}",
    # vLLM completions: embedding vectors as the prompt: no text to score, and a probe of the model at points
    # of its embedding space no token reaches. SGLang's embed_overrides do the same.
    "prompt_embeds": f"embedding vectors as the prompt: {_DETECTION}",
    "embed_overrides": f"embedding vectors in the prompt: {_DETECTION}",
    "embed_override_token_id": f"embedding vectors in the prompt: {_DETECTION}",
    # SGLang chat: token ids that replace the rendered messages (the messages are then only read for stops)
    "input_ids": f"token ids instead of the messages: {_DETECTION}",
    # vLLM: the rendered prompt (the deployment's chat template and system prompt) in `prompt_text`
    "return_prompt_text": "returns the rendered prompt (the deployment's chat template and system prompt)",
    # vLLM: which weight version sampled each token range: tells canary from stable, times rollouts
    "return_weight_versions": "returns which weights served the answer (canary and rollout versions)",
    # vLLM / SGLang: per-token MoE expert routing (`routed_experts`): internals of the model's computation
    "routed_experts_prompt_start": "asks for MoE expert routing data (model internals)",
    "return_routed_experts": "asks for MoE expert routing data (model internals)",
    "routed_experts_start_len": "asks for MoE expert routing data (model internals)",
    # SGLang: hidden states are the model's internal representation: the most direct model-stealing channel
    # there is (a linear map away from the logits that Carlini et al. 2024 extract the last layer from)
    "return_hidden_states": "returns the model's hidden states (a direct model-extraction channel)",
    # SGLang: per-choice engine metadata (weight version, cache hits, timings, speculative-decoding stats)
    "return_meta_info": "returns per-request engine metadata (weight version, cache hits, timings)",
    # SGLang: which prompt tokens hit the prefix cache (device/host/storage): a side channel on other
    # clients' prompts (a hit means someone sent that prefix)
    "return_cached_tokens_details": "returns prefix-cache hits (a side channel on other clients' prompts)",
    # vLLM / SGLang: scheduling priority (lower = earlier): a throttled client would jump the queue that the
    # gateway's tiers and rate limits decide. vLLM also reads it from a header (refused_headers).
    "priority": "scheduling priority is set by the gateway's policy, not by clients",
    # vLLM / SGLang: the engine's request id (vLLM's Responses API uses it as the response id and the key of
    # its stores); the gateway names every request itself (X-Request-Id) and no client may name another's
    "request_id": f"{_ENGINE}: the engine's request id is the gateway's (X-Request-Id)",
    "rid": f"{_ENGINE}: the engine's request id is the gateway's (X-Request-Id)",
    # vLLM: session affinity for routing and caching; SGLang: continue an engine-side session (its cached
    # context, which detection never saw: as previous_response_id, refused on /v1/responses)
    "session_id": f"{_ENGINE}: engine-side sessions (cache and routing affinity with other requests)",
    "session_params": f"{_ENGINE}: continues an engine-side session (context detection never saw)",
    # SGLang PD disaggregation and data-parallel routing: set by its router; a client value pins a worker
    # (co-location with a victim for cache-timing side channels, targeted load) or names a prefill server
    "bootstrap_host": f"{_ENGINE}: prefill/decode disaggregation",
    "bootstrap_port": f"{_ENGINE}: prefill/decode disaggregation",
    "bootstrap_room": f"{_ENGINE}: prefill/decode disaggregation",
    "routed_dp_rank": f"{_ENGINE}: pins the request to a data-parallel worker",
    "data_parallel_rank": f"{_ENGINE}: pins the request to a data-parallel worker",
    "disagg_prefill_dp_rank": f"{_ENGINE}: pins the request to a data-parallel worker",
    # SGLang: a serialized (dill) Python logits processor run in the engine: client code on the GPU host,
    # with the full logits in hand; custom_params are its arguments (vLLM's vllm_xargs, stripped by hardening)
    "custom_logit_processor": "client code run in the engine (a serialized logits processor)",
    "custom_params": "arguments for the engine's custom logits processors (only the gateway may set them)",
    # SGLang: labels on the engine's own metrics: unbounded label values chosen by clients
    "custom_labels": f"{_ENGINE}: labels on the engine's metrics",
    # SGLang lora_path, TGI adapter_id: serve an adapter the operator did not publish as a model (an
    # internal fine-tune, a canary); published adapters are models of their own in the gateway's config
    "lora_path": "selects a LoRA adapter the operator did not publish",
    "adapter_id": "selects a LoRA adapter the operator did not publish",
}

# Request headers refused by default: vLLM 0.33 reads these before (or instead of) the body fields above,
# and the gateway forwards end-to-end headers it does not know.
REFUSED_HEADERS: dict[str, str] = {
    "x-vllm-priority": "scheduling priority is set by the gateway's policy, not by clients",
    "x-data-parallel-rank": f"{_ENGINE}: pins the request to a data-parallel worker",
    "x-session-id": f"{_ENGINE}: engine-side sessions (cache and routing affinity with other requests)",
}

# Answer fields withheld by default (bodies and stream chunks). Most only appear when a refused request field
# asked for them, but several come from the server's own flags, whatever the request says:
WITHHELD_RESPONSE_FIELDS: dict[str, str] = {
    "prompt_text": "the rendered prompt (vLLM return_prompt_text)",
    # the same prompt as token ids (vLLM return_token_ids): decoded with the tokenizer it is prompt_text
    "prompt_token_ids": "the rendered prompt's token ids (vLLM return_token_ids)",
    "weight_versions": "which weights served the answer (vLLM return_weight_versions)",
    # vLLM --enable-return-routed-experts: every answer, asked for or not (base64 .npy, per token and layer)
    "routed_experts": "MoE expert routing (vLLM enable_return_routed_experts)",
    "kv_transfer_params": "disaggregated-serving KV transfer state (vLLM)",
    "ec_transfer_params": "disaggregated-serving encoder-cache state (vLLM)",
    # vLLM per-request metrics: queue time and, with speculative decoding on, acceptance statistics on every
    # single-choice answer (how predictable the text was to the model: a coarse logprob)
    "metrics": "per-request engine metrics: queue time, speculative-decoding acceptance (vLLM)",
    "hidden_states": "the model's hidden states (SGLang return_hidden_states)",
    "meta_info": "per-request engine metadata (SGLang return_meta_info)",
    "sglext": "SGLang extensions: routed experts, prefix-cache details",
    # SGLang writes {"weight_version": ...} here on every non-streamed chat/completions answer (OpenAI's chat
    # completion object has no metadata; on the Responses API it is the client's own and is relayed)
    "metadata": "the serving weight version (SGLang)",
}

# The OpenAI Response object's own fields: never withheld from a Responses API answer (``metadata`` there is
# the client's request metadata echoed back, not SGLang's weight version).
RESPONSE_OBJECT_FIELDS = frozenset({
    "id", "object", "created_at", "status", "error", "incomplete_details", "instructions", "max_output_tokens",
    "max_tool_calls", "metadata", "model", "output", "parallel_tool_calls", "previous_response_id", "prompt",
    "prompt_cache_key", "reasoning", "safety_identifier", "service_tier", "store", "temperature", "text",
    "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "usage", "user", "background", "conversation",
})
# What the gateway itself reads or every client needs: refusing or withholding them breaks every request
REQUIRED_REQUEST_FIELDS = frozenset({"model", "messages", "prompt", "input"})
REQUIRED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host"})
REQUIRED_RESPONSE_FIELDS = frozenset({
    "id", "object", "created", "model", "choices", "usage", "index", "message", "delta", "text", "content",
    "role", "tool_calls", "finish_reason", "logprobs", "data", "embedding", "output", "error", "type",
})
