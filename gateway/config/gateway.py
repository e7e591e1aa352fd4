"""``GatewayConfig``: the whole file, every section, and the checks that span sections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.config.auth import SUSPICIOUS_MAX_IN_FLIGHT, AuthConfig, TierLimitsConfig
from gateway.config.base import _Model, _parse_hostport
from gateway.config.policy import AlertsConfig, DetectionConfig, PolicyConfig
from gateway.config.proxy import ProxyConfig
from gateway.config.routing import FingerprintConfig, ModelConfig, RoutingConfig
from gateway.config.service import AdminConfig, ServerConfig, StoreConfig, TelemetryConfig
from gateway.config.watermark import WatermarkConfig

if TYPE_CHECKING:
    pass


class GatewayConfig(_Model):
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9090"
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    limits: dict[str, TierLimitsConfig] = Field(
        default_factory=lambda: {
            "default": TierLimitsConfig(requests_per_minute=600, tokens_per_minute=200_000),
            "suspicious": TierLimitsConfig(requests_per_minute=30, tokens_per_minute=10_000,
                                           max_in_flight=SUSPICIOUS_MAX_IN_FLIGHT),
        }
    )
    models: list[ModelConfig] = Field(min_length=1)
    routing: RoutingConfig = RoutingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    policy: PolicyConfig = PolicyConfig()
    detection: DetectionConfig = DetectionConfig()
    alerts: AlertsConfig = AlertsConfig()
    watermark: WatermarkConfig = WatermarkConfig()
    admin: AdminConfig = AdminConfig()
    fingerprint: FingerprintConfig = FingerprintConfig()
    proxy: ProxyConfig = ProxyConfig()  # extension fields refused in requests, withheld from answers
    # tenant → limit class (a key of `limits`) for clients whose API key or JWT names no class
    limits_by_tenant: dict[str, str] = {}

    @field_validator("limits", mode="before")
    @classmethod
    def _limits_keep_defaults(cls, v: Any) -> Any:
        # A YAML that sets only `limits.default` (issue 2's example) must still satisfy the default policy
        # tiers, which use `suspicious`: entries given in the file override the built-in ones, not replace all.
        if isinstance(v, dict):
            return {"suspicious": {"requests_per_minute": 30, "tokens_per_minute": 10_000,
                                   "max_in_flight": SUSPICIOUS_MAX_IN_FLIGHT}, **v}
        return v

    @field_validator("listen", "admin_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        _parse_hostport(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        if "default" not in self.limits:
            raise ValueError("limits must define 'default' (the limit class of clients that name none)")
        for t in self.policy.tiers:
            if t.limits is not None and t.limits not in self.limits:
                raise ValueError(f"policy tier {t.name!r} uses limits {t.limits!r}, not defined in limits")
        for tenant, name in self.limits_by_tenant.items():
            if name not in self.limits:
                raise ValueError(f"limits_by_tenant: tenant {tenant!r} names limit class {name!r}, not defined in "
                                 f"limits (defined: {', '.join(sorted(self.limits))})")
        for name in self.detection.class_weights:
            if name not in self.limits:
                raise ValueError(f"detection.class_weights: limit class {name!r} is not defined in limits "
                                 f"(defined: {', '.join(sorted(self.limits))})")
        return self

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return v

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.listen)

    @property
    def admin_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.admin_listen)

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None
