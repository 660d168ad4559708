"""The Model API (modelyard.io/v1alpha1): typed spec, CRD generation, offline validation."""
from modelyard.api.types import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    QUANTIZED,
    VERSION,
    Adapter,
    Model,
    ModelSpec,
    Scaling,
    Source,
)
from modelyard.api.validate import ValidationError, load_documents, load_model, parse_model

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "QUANTIZED", "VERSION",
    "Adapter", "Model", "ModelSpec", "Scaling", "Source",
    "ValidationError", "load_documents", "load_model", "parse_model",
]
