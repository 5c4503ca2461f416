"""What the task YAMLs here name with `!function utils.<name>`; the code lives in forgetting.benchmarks."""

from forgetting.benchmarks import doc_to_image, load_docs, process_results

__all__ = ["doc_to_image", "load_docs", "process_results"]
