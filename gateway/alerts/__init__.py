"""Alerts: the model (``model``), where they go (``sinks``) and how they get there (``dispatcher``)."""

from gateway.alerts.dispatcher import AlertDispatcher
from gateway.alerts.model import Alert, redact_text
from gateway.alerts.sinks import AlertSink, JsonlSink, RedisStreamSink, WebhookSink

__all__ = ["Alert", "AlertDispatcher", "AlertSink", "JsonlSink", "RedisStreamSink", "WebhookSink", "redact_text"]
