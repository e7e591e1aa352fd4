"""Who is calling: the result of authentication, used by every later step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    tenant: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    auth_method: str = "jwt"  # "jwt" | "api_key"

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
