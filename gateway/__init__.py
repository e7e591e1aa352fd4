"""ipgate's gateway: the only part of ipgate that does network and store I/O."""

__version__ = "0.1.0"
