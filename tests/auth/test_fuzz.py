"""Crafted junk never escapes as anything but AuthenticationFailed (no 500s from the auth step)."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.authenticator import GENERIC_MESSAGE
from gateway.errors import AuthenticationFailed

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_claims = st.fixed_dictionaries(
    {}, optional={k: _json for k in ("sub", "exp", "iat", "nbf", "aud", "iss", "roles", "tenant")}
)
_header = st.fixed_dictionaries(
    {}, optional={"alg": st.sampled_from(["HS256", "none", "RS256", "", "HS512"]) | _json, "kid": _json,
                  "crit": _json, "typ": _json, "b64": st.booleans()}
)


def _seg(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=_header | _json, claims=_claims | _json, sig=st.binary(max_size=40))
async def test_structured_junk_is_a_401(make_auth: Any, jwt_cfg: Any, header: Any, claims: Any, sig: bytes) -> None:
    auth = make_auth(jwt_cfg())
    token = f"{_seg(header)}.{_seg(claims)}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    try:
        await auth.authenticate("Bearer " + token)
    except AuthenticationFailed as e:
        assert e.message == GENERIC_MESSAGE
    else:  # only a validly signed token could pass, and the random signature is not one
        raise AssertionError("junk token accepted")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(max_size=200))
async def test_arbitrary_header_text_is_a_401(make_auth: Any, jwt_cfg: Any, raw: str) -> None:
    auth = make_auth(jwt_cfg())
    for header in (raw, "Bearer " + raw):
        try:
            await auth.authenticate(header)
        except AuthenticationFailed as e:
            assert e.message == GENERIC_MESSAGE
        else:
            raise AssertionError("junk accepted")
