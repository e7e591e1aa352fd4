"""Fixtures of the audit-trail tests (defined in audit_app.py, which the tests import their helpers from)."""

from tests.admin.audit_app import audited

__all__ = ["audited"]
