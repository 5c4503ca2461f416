"""What every section of the study's configuration (forgetting/config.py) is made of."""

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


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


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, bounds are shown."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, json_schema_extra=_bounds_in_descriptions)
