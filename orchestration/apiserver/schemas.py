"""Custom resource schemas: the API the server uses, gathered from three small modules.

``structural`` compiles a CRD version's openAPIV3Schema once and prunes, defaults and validates
objects with it; ``crds`` checks CRDs themselves and lists what they serve; ``fielderrors``
prints errors the way kube-apiserver does.
"""

from __future__ import annotations

from .crds import crd_resource_types, validate_crd
from .fielderrors import FieldError
from .structural import CompiledSchema, compile_schema

__all__ = ["CompiledSchema", "FieldError", "compile_schema", "crd_resource_types", "validate_crd"]
