"""A model folder's files that cannot be read, named before they fail a stage: a weights file cut short or
overwritten, a config or tokenizer file that does not parse. forgetting/models.py loads every model through
readable(); the command line's checks before any work call check_model_files() on the base."""

import json
from contextlib import contextmanager
from pathlib import Path

from forgetting.config import REPO_ROOT, ConfigError
from forgetting.storage import remake


class ModelLoadError(ConfigError):
    """The model named in the config cannot be loaded; the message says why."""


def unreadable(name_or_path: str) -> tuple[Path, str] | None:
    """The first file of a local model folder that cannot be read, and why (None when all can, or for a hub id): a
    safetensors file whose header does not parse or whose tensors do not cover it to its last byte (safetensors
    checks both on opening it, reading the header only: milliseconds, a 7B model's shards included), a JSON file
    (config, tokenizer, processor) that does not parse."""
    path = Path(name_or_path)
    if not path.is_dir():
        return None
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # safetensors' own SafetensorError; OSError when the file cannot be opened
            return file, str(err)
    for file in sorted(path.glob("*.json")):
        try:
            json.loads(file.read_text())
        except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return file, str(err)
    return None


def check_model_files(name_or_path: str) -> None:
    """ModelLoadError naming a damaged or incomplete file of a local model folder (unreadable), before any work
    instead of in the first stage that loads the model."""
    found = unreadable(name_or_path)
    if found:
        raise ModelLoadError(f"model: {found[0]} cannot be read ({found[1]}){remedy(Path(name_or_path))}")


def remedy(path: Path) -> str:
    """How to get a damaged model folder back: for one a study made (an arm's checkpoint, its own base) the folder to
    delete (storage.remake), for a shipped base how to restore it; '' for any other."""
    path = Path(path).resolve()
    if path.parent == (REPO_ROOT / "assets").resolve() and path.name.endswith("-base"):  # models.SHIPPED
        return (
            f"; it ships with the project: restore it (git checkout -- assets/{path.name}) or rebuild it with: "
            f"python -m flows.pretrain_base --profile {path.name.removesuffix('-base')}"
        )
    return remake(path)


@contextmanager
def readable(path: str):
    """Loading a model's files from path: an error reading them (a damaged, incomplete or missing weights, config
    or tokenizer file) becomes a ModelLoadError naming the file (or the folder) and how to get it back."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        check_model_files(path)  # names the file, when one of them is what cannot be read
        raise ModelLoadError(f"model: cannot load {path} ({type(err).__name__}: {err}){remedy(Path(path))}") from err
