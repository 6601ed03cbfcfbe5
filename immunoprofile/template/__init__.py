"""Gating templates: the YAML model, validation, and GatingML / FlowJo interop."""

from immunoprofile.template.model import (
    ROOT,
    BooleanGate,
    Dimension,
    EllipseGate,
    Gate,
    PolygonGate,
    Population,
    Ratio,
    RectangleGate,
    Template,
)
from immunoprofile.template.transforms import (
    Arcsinh,
    GMLAsinh,
    GMLLinear,
    GMLLog,
    Hyperlog,
    Identity,
    Logicle,
    Transform,
    transform_from_dict,
)
from immunoprofile.template.yaml_io import (
    load_template,
    shipped_templates,
    shipped_templates_dir,
    template_from_dict,
    template_hash,
    template_to_dict,
    validate_template,
    write_template,
)

__all__ = [
    "ROOT",
    "Arcsinh",
    "BooleanGate",
    "Dimension",
    "EllipseGate",
    "GMLAsinh",
    "GMLLinear",
    "GMLLog",
    "Gate",
    "Hyperlog",
    "Identity",
    "Logicle",
    "PolygonGate",
    "Population",
    "Ratio",
    "RectangleGate",
    "Template",
    "Transform",
    "load_template",
    "shipped_templates",
    "shipped_templates_dir",
    "template_from_dict",
    "template_hash",
    "template_to_dict",
    "transform_from_dict",
    "validate_template",
    "write_template",
]


_INTEROP = {"read_gatingml": "gatingml", "write_gatingml": "gatingml",
            "read_flowjo": "gatingml", "read_flowjo9": "flowjo9", "read_diva": "diva",
            "import_template": "importers", "gating_file_kind": "importers"}


def __getattr__(name: str):
    # GatingML and FlowJo interop need FlowKit: loaded when first used, not with every template.
    if name in _INTEROP:
        # start-up time: interop needs FlowKit, loaded when first used
        import importlib

        return getattr(importlib.import_module(f"immunoprofile.template.{_INTEROP[name]}"), name)
    raise AttributeError(f"module 'immunoprofile.template' has no attribute {name!r}")
