"""`modelyard convert`: any supported weight format in, a verified Hugging Face safetensors folder out.

See docs/convert.md. ``convert(Request(...))`` is the entry point; the CLI is
``modelyard.commands.convert``.
"""
from modelyard.runtime.convert.pipeline import Request, convert

__all__ = ["Request", "convert"]
