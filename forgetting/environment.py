"""What a result was made with besides its config: the versions of the libraries that train, the syntax of the
project's training code and the CPU's float rounding (all part of an arm's cache key: forgetting/arms.py:arm_spec),
and the whole Python environment and the code's commit, recorded with every study (its report folder and its MLflow
run); and that environment's packages as pip constraints, to install them again (pins).
"""

import ast
import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from forgetting import NUMERICS_VARIABLES
from forgetting.errors import ConfigError

# The libraries whose versions can change what an arm learns, and the project's modules that train an arm.
TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "vllm")
TRAINING_CODE = (
    "arms", "arm_config", "trainer", "sft", "rft", "rollout_sft", "shared_prompts", "fast_paths", "models",
    "inference", "puzzles", "puzzle_data", "iterative_sft",
)  # fmt: skip
PACKAGE = Path(__file__).resolve().parent


def check_cpu_numerics() -> None:
    """ConfigError when MKL's strict mode is asked for but a product whose sum MKL splits over threads still comes
    out otherwise on one thread than on this process's several: MKL ran before the variable was set, and the arms'
    numbers would not be the ones their keys promise. A product of fixed random inputs (its own generator: the
    process's random stream is untouched), a few milliseconds; nothing to check on one thread, or where torch
    multiplies without MKL (ARM builds: the variable does nothing there, and the threads may round apart)."""
    import torch

    threads = torch.get_num_threads()
    strict = "STRICT" in os.environ.get("MKL_CBWR", "").upper()
    if not strict or threads < 2 or not torch.backends.mkl.is_available():
        return
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 5120, generator=generator), torch.randn(5120, 512, generator=generator)
    products = []
    for n in (1, threads):
        torch.set_num_threads(n)
        products.append(a @ b)
    torch.set_num_threads(threads)
    if not torch.equal(*products):
        raise ConfigError(
            f"MKL_CBWR={os.environ['MKL_CBWR']}, but MKL's products still round otherwise on 1 thread than on "
            f"{threads}: MKL ran before the variable was set (import forgetting before torch runs anything, or set "
            "FORGETTING_NUMERICS=native)"
        )


def cpu_numerics() -> dict[str, str]:
    """The float-rounding settings in effect: each of NUMERICS_VARIABLES that is set, with its value."""
    return {name: os.environ[name] for name in NUMERICS_VARIABLES if os.environ.get(name)}


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
    """The library versions (installed ones), the training code's fingerprint and the CPU's float-rounding settings
    (cpu_numerics; none under FORGETTING_NUMERICS=native: the keys arms always had), for an arm's cache key: an
    upgrade of TRL, a change to how arms train or another rounding makes new arms instead of reusing old ones.
    ConfigError when the settings came too late for torch (check_cpu_numerics)."""
    check_cpu_numerics()
    numerics = cpu_numerics()
    return {
        "libraries": {name: v for name in TRAINING_LIBRARIES if (v := installed(name))},
        "code": code_fingerprint(training_sources())[:16],
        **({"cpu_numerics": numerics} if numerics else {}),
    }


def environment() -> dict:
    """The Python environment a study ran in: interpreter, platform, CPU and its cores, accelerator, the project's code
    (code_version) and every installed distribution with its version (what `pip freeze` lists)."""
    import torch

    packages = {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_numerics": cpu_numerics(),
        "code": code_version(),
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
    }


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what platform knows, None if nothing): float rounding,
    and with it a sampled arm's numbers, can differ between CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def code_version(root: Path = PACKAGE.parent) -> dict:
    """The project's code as it ran: the training code's fingerprint (what arm keys hold), and where root is a git
    checkout its commit and the files that differed from it (`git status`: changed, added or new, not ignored);
    commit None where there is no checkout or no git."""
    code = {"training_code": training_fingerprint()["code"], "commit": None, "changed": []}
    try:
        git = ("git", "-C", str(root))
        commit = subprocess.run((*git, "rev-parse", "HEAD"), capture_output=True, text=True, timeout=10)
        status = subprocess.run((*git, "status", "--porcelain"), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return code
    if commit.returncode or status.returncode:
        return code
    changed = sorted(line[3:] for line in status.stdout.splitlines() if line.strip())
    return code | {"commit": commit.stdout.strip(), "changed": changed}


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503: Pillow and pillow, typing_extensions and -extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def training_differences(recorded: dict) -> list[str]:
    """What of an arm's key differs between a recorded environment (environment's dict) and this process: each
    training library at another version (`peft 0.21.2, here 0.22.0`), the training code where the record holds its
    fingerprint, and the CPU's float-rounding settings (a record without them ran before there were any: native).
    Empty when a rerun here would find the recorded run's arms."""
    packages = {canonical(name): v for name, v in recorded.get("packages", {}).items()}
    ours = training_fingerprint()
    found = [
        f"{name} {packages.get(name) or 'absent'}, here {ours['libraries'].get(name) or 'absent'}"
        for name in TRAINING_LIBRARIES
        if packages.get(name) != ours["libraries"].get(name)
    ]
    if (code := (recorded.get("code") or {}).get("training_code")) and code != ours["code"]:
        found.append(f"training code {code}, here {ours['code']}")
    theirs, here = recorded.get("cpu_numerics") or {}, ours.get("cpu_numerics") or {}
    if theirs != here:
        shown = [" ".join(f"{k}={v}" for k, v in side.items()) for side in (theirs, here)]
        found.append(
            f"CPU float rounding {shown[0] or 'native'}, here {shown[1] or 'native'} "
            f"({shown[0] or 'FORGETTING_NUMERICS=native'} runs as it did)"
        )
    return found


# what the project installs itself, and the installers: no pin of theirs belongs in another checkout's install
NOT_PINNED = frozenset({"forgetting-study", "pip", "setuptools", "wheel"})


def pins(recorded: dict) -> str:
    """The packages of a recorded environment (environment's dict) as pip constraints, one `name==version` a
    line: pip installs those versions of whatever the project needs. A local build label (torch's +cu128) is
    left off, since PyPI has no such file; the version is the same release. Header comments name the Python
    and the commit it ran with, which pins cannot install."""
    code = recorded.get("code") or {}
    lines = [
        f"# the packages of a run on Python {recorded.get('python', '?')}, code "
        + (f"commit {code['commit']}" if code.get("commit") else "of a commit not recorded")
        + (f" with {len(code['changed'])} file(s) changed" if code.get("changed") else ""),
    ]
    for name, version in recorded["packages"].items():
        if canonical(name) not in NOT_PINNED:
            lines.append(f"{name}=={version.split('+')[0]}")
    return "\n".join(lines) + "\n"
