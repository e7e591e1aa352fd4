"""Telemetry: Prometheus metrics, OpenTelemetry traces (GenAI semantic conventions) and the JSON access log.

Nothing here ever records prompt text, completion text or credentials, and no metric carries a per-client
label (cardinality): per-client facts go to the access log and to the store, not to Prometheus.
"""
