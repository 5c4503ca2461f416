"""The shape of the code: the domain package stands alone, no import cycles, no module a reader must scroll."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from forgetting.config import REPO_ROOT

PACKAGES = ("forgetting", "tasks", "flows", "assets", "deployments", "benchmarks")
ORCHESTRATION = ("prefect", "mlflow", "tasks", "flows", "deployments", "assets")


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO_ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module path imports, at the top or inside a function (`from a import b` counts a.b when that
    is a module of the project, else a)."""
    known = {module_name(p) for p in project_files()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= subs or {node.module}
    return found


def test_no_module_outside_tests_is_over_400_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in project_files() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by concern: {long}"


def test_no_import_cycle_among_the_project_modules():
    graph = {module_name(p): {m for m in imports(p) if m.split(".")[0] in PACKAGES} for p in project_files()}
    for module in graph:  # importing a.b runs a/__init__.py first
        graph[module] = {dep for m in graph[module] for dep in _with_parents(m)} - {module}
    done, cycles = set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def test_the_domain_package_imports_no_orchestration():
    """forgetting/ is what a notebook imports: no Prefect, no MLflow, nothing of tasks/ or flows/."""
    for path in (REPO_ROOT / "forgetting").rglob("*.py"):
        bad = {m for m in imports(path) if m.split(".")[0] in ORCHESTRATION}
        assert not bad, f"{path.relative_to(REPO_ROOT)} imports {bad}"
    config_deps = {m for m in imports(REPO_ROOT / "forgetting" / "config.py") if m.startswith("forgetting")}
    assert config_deps <= {"forgetting.schema", "forgetting.storage", "forgetting.arm_config"}, (
        f"the configuration imports a stage: {config_deps}"
    )


def test_every_domain_module_imports_without_prefect_or_mlflow():
    modules = sorted(module_name(p) for p in (REPO_ROOT / "forgetting").glob("*.py"))
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_flows_call_mlflow_through_tasks_only():
    """MLflow calls live in tasks/ (beside the Prefect tasks they log); a flow reads as the DAG."""
    for path in (REPO_ROOT / "flows").glob("*.py"):
        assert not {m for m in imports(path) if m.split(".")[0] == "mlflow"}, path.name


def _fields(model, path=""):
    """(dotted path, field name) of every leaf setting of a config section, recursively."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _fields(kind, f"{path}{name}.")
        else:
            yield f"{path}{name}", name


def _property_reads(path: Path) -> set[str]:
    """Attribute names read inside the @property methods of a module (a stage reading the property reads them)."""
    reads = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and any(getattr(d, "id", "") == "property" for d in node.decorator_list):
            reads |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    return reads


def test_every_setting_is_read_by_some_stage():
    """A setting nothing reads is a lie in the form and in every profile that sets it: each leaf field of
    StudyConfig must be read as an attribute (`.name`) somewhere outside the modules that declare the schema
    (validators there do not count; properties do, as what they compute is read)."""
    from forgetting.config import StudyConfig

    declaring = [REPO_ROOT / "forgetting" / name for name in ("config.py", "arm_config.py", "schema.py")]
    sources = [
        p.read_text()
        for folder in ("forgetting", "tasks", "flows", "deployments")
        for p in (REPO_ROOT / folder).glob("*.py")
        if p not in declaring
    ]
    code, via_properties = "\n".join(sources), set().union(*map(_property_reads, declaring))
    unread = [
        path
        for path, name in _fields(StudyConfig)
        if name not in via_properties and not re.search(rf"\.{name}\b", code)
    ]
    assert not unread, f"settings no stage reads: {unread}"


def test_the_declared_dependencies_admit_only_versions_the_code_runs_on():
    """pyproject's ranges start where the APIs the code calls do (transformers 5.23 takes the rope call of
    forgetting/shared_prompts.py under another keyword, 5.17 lacks the assistant-mask method fast_paths.py
    replaces), admit what is installed here, and pin vLLM and DeepSpeed through TRL."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for name, too_old in [("transformers", "4.57.0"), ("transformers", "5.23.0"), ("trl", "1.15.0")]:
        assert not declared[name].specifier.contains(too_old), f"{name} {too_old} is admitted"
        assert declared[name].specifier.contains(version(name)), f"the installed {name} is not admitted"
    (gpu,) = [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    assert gpu.name == "trl" and {"vllm", "deepspeed"} <= gpu.extras and gpu.specifier == declared["trl"].specifier
