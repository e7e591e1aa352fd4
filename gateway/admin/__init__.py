"""The admin listener: health, readiness, metrics and the admin API.

Each feature contributes routes from its own module (``gateway/admin/<feature>.py`` exposing
``routes(ctx) -> list[web.RouteDef]``); ``ADMIN_MODULES`` lists them in one place.
"""
