"""moatwatch detection models (pure: River, numpy, stdlib; no I/O, no Faust/Kafka/Prometheus).

The drivers use :class:`models.engine.DetectionCore` (one per input partition) and
:func:`models.prompt.derive_prompt_fields`.
"""

from models.engine import MODEL_VERSION, DetectionCore, DetectorConfig
from models.prompt import derive_prompt_fields

__all__ = ["MODEL_VERSION", "DetectionCore", "DetectorConfig", "derive_prompt_fields"]
