"""Pre-flight checks of a configuration, as ``nginx -t`` does: what ``ipgate check`` reports.

``offline(cfg)`` builds every part of the gateway that reads the configuration, secrets and files — the tier
policy, the authenticator (secrets, public keys, the API-key file), the admin token, the watermark keys, the
detection combiner, the alert sinks, each backend's credential and fingerprint reference — with the very
constructors ``ipgate serve`` uses, so a configuration that passes starts, and an error names the field as
``serve`` would. It also points out what starts but does something other than the operator likely meant
(warnings): no authentication method, a KGW model without a watermark-capable backend, several workers on the
in-memory store, a backend credential variable that is unset, an output file in a directory that cannot be
written. Nothing listens, nothing is written, nothing leaves the host.

``online(cfg)`` then asks the outside world, read-only: Redis (the store's, and each ``redis_stream`` alert
sink's) answers PING, every backend answers its health path with its credential, every watermark-capable
backend passes the KGW plugin probe (a refusal by design: nothing is generated), the JWKS endpoint serves
usable keys. Webhook sinks are not called: a request would deliver an alert.

The package: ``finding`` (a ``Finding``, and ``Guard``, which turns a constructor's ``ConfigError`` into one),
``local`` (``offline``), ``backends`` (``offline``'s checks of each backend entry), ``remote`` (``online``).
"""

from gateway.preflight.finding import Finding, Level
from gateway.preflight.local import offline
from gateway.preflight.remote import online

__all__ = ["Finding", "Level", "offline", "online"]
