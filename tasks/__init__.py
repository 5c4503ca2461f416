"""The study's Prefect tasks: thin wrappers over the domain code in forgetting/ that add what orchestration
needs (assets and their lineage, retries, artifacts) and log to MLflow (tasks/tracking.py)."""

from forgetting.puzzle_data import PuzzleError
from forgetting.schema import ConfigError

# Failures a retry cannot change: bad input (a config value, a damaged model or image file), named by the error.
BAD_INPUT = (ConfigError, PuzzleError)


def retried_unless(*errors: type[BaseException]):
    """A task's retry_condition_fn: a failed task runs again unless it raised one of errors (bad input by default),
    which would only fail again, after the retry's delay, with the same message."""
    errors = errors or BAD_INPUT

    def worth_retrying(task, task_run, state) -> bool:
        try:
            state.result()
        except errors:
            return False
        except Exception:
            return True
        return True

    return worth_retrying
