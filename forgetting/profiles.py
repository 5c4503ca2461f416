"""Profiles: a YAML file in configs/ plus `--set dotted.key=value` overrides -> a validated StudyConfig.

    python -m flows.study --profile tiny --set arms.sft.learning_rate=1e-4 --output-dir /tmp/run

A profile may start from another: `extends: tiny-think` takes that profile's mapping and sets this file's keys
over it, section by section (a key this file leaves out keeps the other profile's value). A bad file, key or value
is a ConfigError whose message names the field.
"""

import difflib
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from forgetting.config import PROFILES_DIR, ConfigError, StudyConfig


def profile_path(profile: str) -> Path:
    """A profile name from configs/ or a path to a YAML file."""
    if profile.endswith((".yaml", ".yml")) or "/" in profile:
        path = Path(profile).expanduser()
    else:
        path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"profile: no such profile {profile!r} (known: {known}; or give a .yaml path)")
    return path


def write_profile(profile: dict, path: Path) -> None:
    """A config's dump as a profile file that load_config reads back to the same config (a report's config.yaml)."""
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` override; the value is read as YAML (3, 1e-4, [0,1], true, text)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def section_at(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The config section (a pydantic model) at a path of field names below model; None past a plain value."""
    for name in path:
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if field is None:
            return None
        kinds = (field.annotation, *typing.get_args(field.annotation))
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if model is None:
            return None
    return model


def unknown_key(model: type[BaseModel], loc: tuple) -> str:
    """What an unknown key at loc is likely a misspelling of, or else the keys its section has."""
    section = section_at(model, loc[:-1])
    if section is None:
        return "unknown key"
    keys = list(section.model_fields)
    if close := difflib.get_close_matches(str(loc[-1]), keys, n=3, cutoff=0.5):
        return f"unknown key (did you mean {' or '.join(close)}?)"
    return f"unknown key (this section has {', '.join(keys)})"


def describe_validation_error(err: ValidationError, model: type[BaseModel] = StudyConfig) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: {unknown_key(model, e['loc'])}")
        elif isinstance(e.get("input"), dict):  # a check across fields: the message names them
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def build_config(data: dict) -> StudyConfig:
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None


def read_profile(profile: str, seen: tuple[Path, ...] = ()) -> dict:
    """A profile's mapping, its `extends:` chain resolved (the named profile's mapping under this one's keys)."""
    path = profile_path(profile).resolve()
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise ConfigError(f"profile {path}: extends itself ({chain})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"profile {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"profile {path}: extends names one profile, not {parent!r}")
    return merged(read_profile(parent, (*seen, path)), data)


def merged(base: dict, over: dict) -> dict:
    """base with over's keys set on it; a section present in both is merged key by key."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def load_config(
    profile: str = "tiny", overrides: list[str] | tuple[str, ...] = (), output_dir: str | None = None
) -> StudyConfig:
    """Profile YAML + `--set` overrides + output dir -> a validated StudyConfig, or ConfigError."""
    data = read_profile(profile)
    for assignment in overrides:
        set_dotted(data, assignment)
    if output_dir is not None:
        set_dotted(data, f"output.dir={Path(output_dir).expanduser().resolve()}")
    return build_config(data)


def with_next_seeds(config: StudyConfig, n: int) -> StudyConfig:
    """The study over its own seeds, every other seed with a one-seed report in the output folder, and the n
    lowest seeds with none (what a scheduled run runs: schedule.add_seeds)."""
    have = set(config.all_seeds)
    one = [config.model_copy(update={"seed": s, "seeds": []}) for s in range(64)]
    have |= {s for s, seeded in enumerate(one) if (seeded.report_dir / "summary.json").is_file()}
    new = [s for s in range(len(have) + n) if s not in have][:n]
    if len(have) + len(new) > 16:
        raise ConfigError(f"schedule.add_seeds: the study would have {len(have) + len(new)} seeds, at most 16")
    return config.model_copy(update={"seeds": sorted(have | set(new))})
