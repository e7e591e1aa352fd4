"""ipgate's extraction and distillation detectors: a sans-IO core (no gateway imports, no I/O).

Entry points: ``detectors.features.extract`` (request -> features) and ``detectors.engine.Engine``
(features + stored state bytes -> verdict + new state bytes). See ``detectors/engine.py`` for the API.
"""
