"""What a result was made with besides its config: the versions of the libraries that train and the syntax of the
project's training code (both part of an arm's cache key: forgetting/arms.py:arm_spec), and the whole Python
environment, recorded with every study (its report folder and its MLflow run).
"""

import ast
import functools
import hashlib
import platform
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

# The libraries whose versions can change what an arm learns, and the project's modules that train an arm.
TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "vllm")
TRAINING_CODE = (
    "arms", "arm_config", "trainer", "sft", "rft", "rollout_sft", "shared_prompts", "fast_paths", "models",
    "inference", "puzzles", "puzzle_data", "iterative_sft",
)  # fmt: skip
PACKAGE = Path(__file__).resolve().parent


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read_sources(modules: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The package modules' file names and texts as they are on disk now. Read as a process imports the modules
    (about 0.5 ms for the thirteen training modules), they are the code it runs, even if a file is edited while it
    runs; parsing them is what costs (code_fingerprint, about 70 ms for those), so it waits until a fingerprint is
    asked for."""
    return tuple((f"{module}.py", (PACKAGE / f"{module}.py").read_text()) for module in modules)


@functools.cache
def code_fingerprint(sources: tuple[tuple[str, str], ...]) -> str:
    """sha256 of the sources' syntax trees without docstrings (sources: read_sources's pairs): a code change changes
    it, a comment, a docstring or a reformatting does not."""
    digest = hashlib.sha256()
    for name, text in sources:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            first = body[0] if isinstance(body, list) and body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        digest.update(name.encode() + b"\0" + ast.dump(tree).encode())
    return digest.hexdigest()


@functools.cache
def training_sources() -> tuple[tuple[str, str], ...]:
    """The training code's texts, read at the first call: forgetting/arms.py calls it as it imports the training
    modules, so code edited later in a run names no arm it trains."""
    return read_sources(TRAINING_CODE)


@functools.cache
def training_fingerprint() -> dict:
    """The library versions (installed ones) and the training code's fingerprint, for an arm's cache key: an
    upgrade of TRL or a change to how arms train makes new arms instead of reusing old ones."""
    return {
        "libraries": {name: v for name in TRAINING_LIBRARIES if (v := installed(name))},
        "code": code_fingerprint(training_sources())[:16],
    }


def environment() -> dict:
    """The Python environment a study ran in: interpreter, platform, accelerator and every installed
    distribution with its version (what `pip freeze` lists)."""
    import torch

    packages = {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
    }
