"""The one registry of detectors: name -> class. Config enables/weights them by these names only.

Adding a detector = one module with one class implementing ``detectors.base.Detector`` + one line here.
Classes that set ``uses_reference = True`` receive the fitted benign ``Reference`` as ``reference=``.
"""

from __future__ import annotations

from collections.abc import Mapping

from detectors.coverage import Coverage
from detectors.linking import CrossAccountLinking
from detectors.logit_probing import LogitProbing
from detectors.reasoning import ReasoningElicitation
from detectors.semantic import SemanticCoverage
from detectors.templates import Templates
from detectors.timing import AutomationTiming
from detectors.volume import VolumeShape

REGISTRY: Mapping[str, type] = {
    cls.name: cls
    for cls in (
        LogitProbing, Templates, Coverage, VolumeShape, AutomationTiming, ReasoningElicitation,
        CrossAccountLinking, SemanticCoverage,
    )
}
# ``semantic`` needs the MiniLM vectors that only ``detection.embedder: minilm`` computes (off the request path).
DEFAULT_ENABLED: frozenset[str] = frozenset(REGISTRY) - {SemanticCoverage.name}
