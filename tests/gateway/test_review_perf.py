"""Adversarial review of ``AppContext.start`` (eager accounting): it must behave like ``spawn``'s Task for
what the coroutine can observe, not only for the happy path the round-2 tests cover."""

from __future__ import annotations

import asyncio
import contextvars

from gateway.context import AppContext

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("review_var", default="unset")


def _bare_ctx() -> AppContext:
    ctx = AppContext.__new__(AppContext)
    ctx.background = set()
    return ctx


async def _drain(ctx: AppContext) -> None:
    while ctx.background:
        await asyncio.gather(*ctx.background)


async def test_start_keeps_context_changes_out_of_the_caller() -> None:
    """A Task runs its coroutine in a copy of the caller's context: what settle sets must not leak into the
    request handler that called ``finish`` (e.g. a request-scoped logging/tracing variable)."""
    ctx = _bare_ctx()

    async def work() -> None:
        VAR.set("from-settle")

    VAR.set("caller")
    ctx.start(work())
    assert VAR.get() == "caller"


async def test_start_allows_a_context_token_reset_across_a_wait() -> None:
    """``token = var.set(...); await ...; var.reset(token)`` (what OTel's attach/detach does) works in a Task;
    with the first part run in the caller's context and the rest in a copy, reset raised ValueError."""
    ctx = _bare_ctx()
    seen: list[str] = []
    errors: list[BaseException] = []

    async def work() -> None:
        try:
            token = VAR.set("inside")
            await asyncio.sleep(0)
            seen.append(VAR.get())
            VAR.reset(token)
            seen.append(VAR.get())
        except BaseException as e:
            errors.append(e)

    ctx.start(work())
    await _drain(ctx)
    assert errors == []
    assert seen == ["inside", "unset"]
