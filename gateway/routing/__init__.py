"""Routing: model -> pool of weighted backends -> sticky, health-aware choice; canary rollouts.

``router.Router`` is the entry point; ``hashing`` (sticky weighted choice), ``pool`` (caps, passive
health), ``health`` (active checks), ``budget`` (retry budget), ``window`` (outcome stats), ``canary``
(the sans-IO rollout state machine) and ``controller`` (drives it, under a store lease) are its parts.
"""
