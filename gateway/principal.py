"""Who is calling: the result of authentication, used by every later step."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_LIMIT_CLASS = "default"  # the `limits` entry of a client that names no class (config requires it)


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    tenant: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    auth_method: str = "jwt"  # "jwt" | "api_key"
    # key of `limits` the client's rate limits start from (its plan); resolved by gateway/auth/limitclass.py
    limit_class: str = DEFAULT_LIMIT_CLASS

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
