"""Review of the backend url normalisation (``gateway.config.api_root``): only a trailing ``/v1`` *path segment*
is dropped — a host that happens to be called ``v1`` (a Docker Compose or Kubernetes service name) is a host —
and a url whose query or fragment every appended ``/v1/...`` path would land after is refused at load, naming
the field, instead of sending every request and health check to the wrong path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import BackendConfig, api_root


@pytest.mark.parametrize(("url", "root"), [
    ("http://v1", "http://v1"),
    ("http://v1/", "http://v1"),
    ("http://v1/v1", "http://v1"),
    ("https://v1:8443/v1/", "https://v1:8443"),
    ("http://gpu-1:8000/v1", "http://gpu-1:8000"),
    ("http://gpu-1:8000/api/v1", "http://gpu-1:8000/api"),
])
def test_a_host_named_v1_is_not_a_path(url: str, root: str) -> None:
    assert api_root(url) == root
    assert BackendConfig(name="b", url=url).url == root


@pytest.mark.parametrize("url", ["http://gpu-1:8000/v1?api-version=2024", "http://gpu-1:8000/#frag",
                                 "http://gpu-1:8000?x=1"])
def test_a_url_with_a_query_or_fragment_is_refused(url: str) -> None:
    with pytest.raises(ValidationError) as e:
        BackendConfig(name="b", url=url)
    assert "url" in str(e.value) and "query" in str(e.value)
