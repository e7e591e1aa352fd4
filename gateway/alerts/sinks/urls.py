"""What of a sink's URL may be shown: many webhook URLs are credentials themselves (a token in the path or the
query, a password), and a Redis URL may carry the password."""

from __future__ import annotations

from yarl import URL


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` plus ``/…`` when the URL had a path or query: safe to log or show."""
    try:
        u = URL(url)
        origin = str(u.origin())
    except (ValueError, TypeError):
        return "<invalid url>"
    return origin + ("/…" if u.raw_path not in ("", "/") or u.raw_query_string else "")


def scrub_url(text: str, url: str) -> str:
    """``text`` with every spelling of ``url`` (as configured, as yarl normalises it, its path, query and
    password) replaced by its redacted form; for messages of third-party exceptions."""
    safe = redact_url(url)
    parts = {url}
    try:
        u = URL(url)
        parts |= {str(u), u.human_repr()}
        pieces = (u.raw_path_qs, u.path_qs, u.raw_path, u.path, u.raw_query_string, u.query_string, u.password)
        parts |= {p for p in pieces if p and len(p) > 1}
    except (ValueError, TypeError):
        pass
    for part in sorted(parts, key=len, reverse=True):  # whole URLs first, then the pieces left over
        text = text.replace(part, safe if "://" in part else "…")
    return text
