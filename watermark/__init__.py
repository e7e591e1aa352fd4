"""Per-client output watermarks (sans-IO): keys, exact statistics, the lexical scheme and KGW.

Nothing in this package imports ``gateway`` or does I/O; the gateway adapts requests and stores to it.
"""
