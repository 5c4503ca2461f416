"""Pre-flight: the checks that need the file system, a stage or the network, run by every flow and the
command line before any expensive work. The config validates its own values (forgetting/config.py); this
looks at what they point to.
"""

import tempfile
from pathlib import Path

from forgetting.benchmarks import check_benchmarks
from forgetting.config import ConfigError, StudyConfig
from forgetting.model_files import check_model_files
from forgetting.models import check_training_template, resolve_model_path
from tasks.tracking import check_tracking


def check_inputs(config: StudyConfig, base_model: bool = True, benchmarks: bool = True) -> None:
    """ConfigError naming the field, or nothing. base_model=False skips the check that the base model can be
    found (for the flow that builds it), benchmarks=False the check that lm-eval knows every benchmark name
    (for flows that evaluate nothing)."""
    check_output(config.output.path)
    p = config.puzzles
    if p.source == "folder":
        folder = Path(p.folder).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"puzzles.folder: {folder} is not a directory")
    if config.arms.deepspeed and not Path(config.arms.deepspeed).expanduser().is_file():
        raise ConfigError(f"arms.deepspeed: {config.arms.deepspeed} is not a file")
    import torch

    if config.arms.rft.use_vllm and not torch.cuda.is_available():
        raise ConfigError("arms.rft.use_vllm: vLLM rollouts need a GPU, and none is available")
    gpus = torch.cuda.device_count()
    if gpus and config.arms.num_processes > gpus:  # without a GPU, processes share the CPU (gloo)
        raise ConfigError(f"arms.num_processes: {config.arms.num_processes} processes, one per GPU, but {gpus} found")
    check_tracking(config)  # an http(s) MLflow URI must answer
    if benchmarks:
        check_benchmarks(config.evaluation.benchmarks)  # raises EvaluationError, a ConfigError
    if base_model and not config.model.pretrain:
        check_model_files(resolve_model_path(config.model.name_or_path))  # raise ModelLoadError, a ConfigError
        if any(getattr(config.arms, arm).enabled for arm in ("sft", "teacher_sft", "rollout_sft", "iterative_sft")):
            check_training_template(config.model.name_or_path)  # assistant-only loss needs a mask


def check_output(folder: Path) -> None:
    """ConfigError unless the output folder exists, or can be made, and takes a file: it is made here (every run
    would make it next) and a temporary file is written into it and removed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ConfigError(f"output.dir: {folder} is not a folder this run can write to ({err.strerror})") from None
