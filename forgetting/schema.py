"""What every section of the study's configuration (forgetting/config.py) is made of."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from forgetting.errors import ConfigError  # noqa: F401 - imported from here (and from forgetting.config) everywhere


def unset_field(description: str, **bounds: Any) -> Any:
    """An optional setting: empty (None) unless given, and left out of dumps and hashes while empty, so adding one
    changes no id a config already had. bounds: Field's (ge, le, pattern, ...), checked when it is given."""
    return Field(None, description=description, exclude_if=lambda value: value is None, **bounds)


def _bounds_in_descriptions(schema: dict) -> None:
    """The Prefect run form checks a field's bounds but does not show them: its description says them, e.g.
    'Items generated per batch. (1 <= x <= 4096)'."""
    low = {"minimum": "{} <= ", "exclusiveMinimum": "{} < "}
    high = {"maximum": " <= {}", "exclusiveMaximum": " < {}"}
    for field in schema.get("properties", {}).values():
        numbers = [field, *field.get("anyOf", [])]  # an optional number is anyOf [number, null]
        found = {k: n[k] for n in numbers for k in low | high if k in n}
        if found and "description" in field:
            below = "".join(low[k].format(v) for k, v in found.items() if k in low)
            above = "".join(high[k].format(v) for k, v in found.items() if k in high)
            field["description"] += f" ({below}x{above})"


def _nullable(field: dict) -> bool:
    return field.get("default", ...) is None or any(o.get("type") == "null" for o in field.get("anyOf", []))


def _required_in_form(schema: dict, cls: type[BaseModel]) -> None:
    """What the form marks required: every field a config always carries, i.e. one that cannot be empty and is
    never left out of a dump (exclude_if). The deployment's parameters, a whole dumped config, fill them all; the
    rest are "(Optional)" in the form: empty means their default. Prefect replaces a pydantic parameter whole, so
    a partial config sent through the API fails here, naming the missing field, instead of running with defaults
    of a profile nobody chose."""
    properties = schema.get("properties", {})
    required = [
        name
        for name, info in cls.model_fields.items()
        if info.exclude_if is None and name in properties and not _nullable(properties[name])
    ]
    if required:
        schema["required"] = required


def _form_schema(schema: dict, cls: type[BaseModel]) -> None:
    _bounds_in_descriptions(schema)
    _required_in_form(schema, cls)


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated; the form shows bounds and marks what
    is required."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=_form_schema)
