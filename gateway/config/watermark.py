"""Output watermarking: schemes, keys and strengths."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import (
    Field,
    field_validator,
)

from gateway.config.base import MAX_TTL_S, _Model

if TYPE_CHECKING:
    from watermark.kgw.params import KgwParams


class WatermarkConfig(_Model):
    enabled: bool = True
    scheme: Literal["none", "lexical", "kgw"] = "lexical"
    secret_env: str = "IPGATE_WATERMARK_SECRET"
    secret_file: str | None = None
    key_version: int = Field(1, ge=1)
    retained_versions: list[int] = []
    recipients_file: str | None = None
    recipient_ttl_s: float = Field(400 * 86400.0, gt=0, le=MAX_TTL_S,
                                   description="how long a recipient record is kept (finite: a store TTL)")
    # kgw green lists: "g<gamma>-h<context width>-<lefthash|minhash|selfhash>"; the engine plugin (IPGATE_KGW_PARAMS)
    # and `ipgate verify --kgw-params` must use the same spec (the plugin refuses a directive naming another)
    kgw_params: str = "g0.25-h4-selfhash"
    kgw_delta: float = Field(2.0, ge=0, le=50, description="kgw bias for every tier but the 'strong' ones")
    kgw_strong_delta: float = Field(4.0, ge=0, le=50, description="kgw bias for 'strong' (suspicious) tiers")
    kgw_directive_mode: Literal["derive", "key"] = "derive"  # see watermark/kgw/directives.py
    kgw_tokenizer_file: str | None = None  # tokenizer.json for kgw verification on the admin API
    # lexical: markdown list markers ("-"/"*", "1."/"1)") are choice points too, one per list (renders the same)
    lexical_markdown: bool = True

    @field_validator("kgw_params")
    @classmethod
    def _kgw_spec(cls, v: str) -> str:
        from watermark.kgw.directives import parse_spec  # no torch: params and the PRF spec only

        try:
            parse_spec(v)
        except ValueError as e:
            raise ValueError(str(e).removeprefix("ipgate_kgw_spec: ")) from None
        return v

    def kgw(self) -> KgwParams:
        """The KGW parameters this config names (γ, context width, seeding from ``kgw_params``; δ)."""
        from watermark.kgw.directives import parse_spec
        from watermark.kgw.params import KgwParams

        p = parse_spec(self.kgw_params)
        return KgwParams(p.gamma, self.kgw_delta, p.context_width, p.seeding)
