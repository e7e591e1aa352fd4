"""What the proxy lets through besides the OpenAI API: inference-server extension fields that reach engine
internals (``gateway/proxy/fields.py`` holds the defaults and why each one is there)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config.base import _HTTP_TOKEN, _Model
from gateway.proxy.field_catalogue import (
    REFUSED_FIELDS,
    REFUSED_HEADERS,
    REQUIRED_HEADERS,
    REQUIRED_REQUEST_FIELDS,
    REQUIRED_RESPONSE_FIELDS,
    WITHHELD_RESPONSE_FIELDS,
)
from gateway.proxy.fields import name_problem


def _unique(v: list[str]) -> list[str]:
    dup = sorted({n for n in v if v.count(n) > 1})
    if dup:
        raise ValueError(f"{', '.join(map(repr, dup))} listed more than once")
    return v


class ProxyConfig(_Model):
    # request body fields answered 400 naming the field (null and false count as absent); "a.b" names key b
    # of object field a. [] lets every extension through to the backend.
    refused_fields: list[str] = Field(default_factory=lambda: list(REFUSED_FIELDS))
    # request headers answered 400 naming the header (vLLM reads priority, DP rank and session from headers)
    refused_headers: list[str] = Field(default_factory=lambda: list(REFUSED_HEADERS))
    # answer fields removed from chat/completions/embeddings bodies and stream chunks (top level, choices,
    # message/delta) and from Responses API response objects; counted, logged once per field
    withheld_response_fields: list[str] = Field(default_factory=lambda: list(WITHHELD_RESPONSE_FIELDS))
    # top-level request fields that are neither an OpenAI parameter of the endpoint nor a known-safe engine
    # extension (gateway/proxy/known_fields.py): pass (a drop-in proxy: new extensions reach the backend),
    # log (a dry run of refuse: passed, logged and counted) or refuse (400 naming the field; counted as
    # field="(unknown)"). The block list applies in every mode.
    unknown_fields: Literal["pass", "log", "refuse"] = "pass"
    # extra top-level field names refuse mode lets through on every endpoint (refused_fields still wins)
    allowed_fields: list[str] = Field(default_factory=list)

    @field_validator("refused_fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        for n in v:
            if (why := name_problem(n, dotted=True)) is not None:
                raise ValueError(why)
            if n in REQUIRED_REQUEST_FIELDS:
                raise ValueError(f"{n!r} is required by every request of its endpoint: refusing it refuses them all")
        return _unique(v)

    @field_validator("refused_headers")
    @classmethod
    def _headers(cls, v: list[str]) -> list[str]:
        for h in v:
            if not _HTTP_TOKEN.fullmatch(h):
                raise ValueError(f"{h!r} is not a valid HTTP header name")
            if h.lower() in REQUIRED_HEADERS:
                raise ValueError(f"{h!r} is sent with every request: refusing it refuses them all")
        return _unique([h.lower() for h in v])

    @field_validator("withheld_response_fields")
    @classmethod
    def _withheld(cls, v: list[str]) -> list[str]:
        for n in v:
            if (why := name_problem(n, dotted=False)) is not None:
                raise ValueError(why)
            if n in REQUIRED_RESPONSE_FIELDS:
                raise ValueError(f"{n!r} is part of every answer clients and the gateway read: it cannot be withheld")
        return _unique(v)

    @field_validator("allowed_fields")
    @classmethod
    def _allowed(cls, v: list[str]) -> list[str]:
        for n in v:
            if (why := name_problem(n, dotted=False)) is not None:  # top-level names: the allowlist tests no deeper
                raise ValueError(why)
        return _unique(v)
