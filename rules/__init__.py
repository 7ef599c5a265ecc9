"""leadpulse scoring brain: model files, their validation, and the pure scoring engine.

Public surface::

    from rules import default_model, load_model, CompiledModel, ModelError
    from rules.engine import new_state, apply_event, view, top_reasons, merge_state

``rules`` imports nothing else from leadpulse and does no I/O except reading model files
in :func:`load_model`.
"""

from rules.model import CompiledModel, default_model, load_model
from rules.schema import ModelError

__all__ = ["CompiledModel", "ModelError", "default_model", "load_model"]
