"""Typed configuration: one YAML file plus ``IPGATE_*`` environment overrides, validated once at start-up.

Overrides use ``__`` between path segments: ``IPGATE_STORE__KIND=redis``, ``IPGATE_LISTEN=0.0.0.0:8080``.
Only variables whose first segment names a top-level field are overrides; the rest (``IPGATE_JWT_SECRET``,
``IPGATE_WATERMARK_SECRET``) are secrets that config fields point at by name. Values are parsed as YAML
scalars, so ``IPGATE_ROUTING__RETRIES=3`` is an int.

Secrets never live in the YAML: fields ending in ``_env`` name an environment variable, fields ending in
``_file`` name a file. ``ConfigError`` names the file and the dotted field path of every problem.

One module per concern (``base``, ``service``, ``auth``, ``routing``, ``policy``, ``watermark``, the whole
file in ``gateway``, reading it in ``loader``); every name is imported from here.
"""

from gateway.config.auth import ApiKeysConfig, AuthConfig, JwtConfig, TierLimitsConfig
from gateway.config.base import ConfigError, read_header_secret, read_secret
from gateway.config.gateway import GatewayConfig
from gateway.config.loader import load_config, load_yaml, parse_config
from gateway.config.policy import (
    AlertsConfig,
    AlertSinkConfig,
    DetectionConfig,
    DetectorToggle,
    HardeningConfig,
    PolicyConfig,
    TierPolicyConfig,
)
from gateway.config.proxy import ProxyConfig
from gateway.config.routing import (
    BackendConfig,
    CanaryAnalysisConfig,
    CanaryConfig,
    CanaryStep,
    FingerprintConfig,
    HealthConfig,
    ModelConfig,
    RoutingConfig,
    api_root,
)
from gateway.config.service import AdminConfig, ServerConfig, StoreConfig, TelemetryConfig
from gateway.config.watermark import WatermarkConfig

__all__ = [
    "AdminConfig",
    "AlertSinkConfig",
    "AlertsConfig",
    "ApiKeysConfig",
    "AuthConfig",
    "BackendConfig",
    "CanaryAnalysisConfig",
    "CanaryConfig",
    "CanaryStep",
    "ConfigError",
    "DetectionConfig",
    "DetectorToggle",
    "FingerprintConfig",
    "GatewayConfig",
    "HardeningConfig",
    "HealthConfig",
    "JwtConfig",
    "ModelConfig",
    "PolicyConfig",
    "ProxyConfig",
    "RoutingConfig",
    "ServerConfig",
    "StoreConfig",
    "TelemetryConfig",
    "TierLimitsConfig",
    "TierPolicyConfig",
    "WatermarkConfig",
    "api_root",
    "load_config",
    "load_yaml",
    "parse_config",
    "read_header_secret",
    "read_secret",
]
