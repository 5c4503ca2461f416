"""The evaluation stage as Prefect tasks: one per model evaluated, materializing its results folder with the
model as its upstream asset.
"""

from pathlib import Path

from prefect.assets import materialize

from assets import evaluation
from forgetting.benchmarks import BenchmarkData
from forgetting.evaluation import EvalTarget, eval_dir, evaluate_target


def evaluation_task(config, target: EvalTarget, data: BenchmarkData, base: str) -> Path:
    """evaluate_target as a Prefect task materializing the evaluation folder (lineage: the model evaluated)."""
    out = eval_dir(config, target, data, base)
    task = materialize(
        evaluation(out, target.arm, target.step),
        name=f"evaluate-{target.arm}",
        task_run_name=f"evaluate-{target.arm}-{target.step}",
        asset_deps=[Path(target.path).resolve().as_uri()] if Path(target.path).exists() else None,
        retries=1,
        retry_delay_seconds=5,
    )(evaluate_target)
    return task(config, target, data, base)
