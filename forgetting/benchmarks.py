"""The benchmarks, through lm-eval, the harness researchers already trust.

- The tiny world's benchmarks (the held-out split of each prior-knowledge task) and the puzzle test split
  are lm-eval task YAMLs shipped in assets/lm_eval/ over the data each study generates; real runs name
  lm-eval's own tasks (mmmu_val, chartqa, text tasks), which pass through unchanged.
- `StudyLM` is the one lm-eval model class (registered as `study-vlm`): batched generation over images and
  text through the same processor path as training, for the tiny model and Qwen2.5-VL alike; also
  log-likelihoods, for multiple-choice benchmarks.
- Each benchmark row follows one schema: {benchmark, metric, value, stderr, n, format_failures}; the
  format check counts answers outside the benchmark's answer format (format collapse, not ignorance).
- A puzzle answer is graded by forgetting/puzzles.py:score_answer, the reward's own parser: exact accuracy
  on the puzzle has that one source.
"""

import functools
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from PIL import Image

from forgetting.answer_formats import format_check
from forgetting.config import ConfigError
from forgetting.image_files import IMAGE_FILES
from forgetting.inference import continuation_logprobs, generate_and_score, sampling
from forgetting.models import chat
from forgetting.puzzle_data import PuzzleDataset
from forgetting.puzzles import format_answer, parse_answer, score_answer
from forgetting.storage import read_json_lines, rows_dataset
from forgetting.world import PRIOR_TASKS, grade

LM_EVAL_TASKS = Path(__file__).resolve().parent.parent / "assets" / "lm_eval"
TINY_WORLD = "tiny_world"
PUZZLE_BENCHMARKS = {"direct": "jigsaw", "think": "jigsaw_think"}  # the puzzle test split, by prompt style


class EvaluationError(ConfigError):
    """A benchmark cannot run: unknown name, missing data."""


# ---------------------------------------------------------------------------------------------------------
# What the shipped task YAMLs call (assets/lm_eval/utils.py re-exports these)


def load_docs(
    benchmark: str,
    tiny_world_dir: str | None = None,
    puzzles_dir: str | None = None,
    style: str = "direct",
    **_,
):
    """The documents of one shipped benchmark as lm-eval's custom_dataset: {"test": datasets.Dataset} with
    id, prompt, answer, format (see forgetting.world.grade) and an absolute image path ("" for text only)."""
    if benchmark == "jigsaw":
        if not puzzles_dir:
            raise EvaluationError("the jigsaw benchmark needs the puzzle folder (TaskManager metadata puzzles_dir)")
        folder = Path(puzzles_dir)
        rows = [
            {
                "id": r["id"],
                "prompt": r[f"prompt_{style}"],
                "answer": format_answer(r["answer"]),
                "format": f"jigsaw:{style}",
                "image": str(folder / r["image"]),
            }
            for r in PuzzleDataset(folder, folder.name).records("test")
        ]
    else:
        if not tiny_world_dir:
            raise EvaluationError(f"{TINY_WORLD}_{benchmark} needs the held-out folder (metadata tiny_world_dir)")
        path = Path(tiny_world_dir) / f"{benchmark}.jsonl"
        if not path.is_file():
            raise EvaluationError(f"{TINY_WORLD}_{benchmark}: no held-out data at {path}")
        rows = read_json_lines(path)
        for row in rows:
            row["image"] = str(Path(tiny_world_dir) / row["image"]) if row["image"] else ""
    return {"test": rows_dataset(rows)}


def doc_to_image(doc: dict) -> list[Image.Image]:
    return [IMAGE_FILES.rgb(doc["image"])] if doc["image"] else []


def grade_doc(doc: dict, text: str) -> tuple[bool, bool]:
    """(correct, in the benchmark's answer format) for one shipped-benchmark document."""
    kind, _, style = doc["format"].partition(":")
    if kind == "jigsaw":
        answer = [int(x) for x in doc["answer"].split()]
        return bool(score_answer(text, answer, style).exact), parse_answer(text, len(answer)) is not None
    return grade(text, doc["answer"], doc["format"])


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    correct, in_format = grade_doc(doc, results[0])
    return {"exact_match": float(correct), "format_ok": float(in_format)}


# ---------------------------------------------------------------------------------------------------------
# The lm-eval model


def request_conversation(context: str, visuals: list | None = None) -> list[dict]:
    """lm-eval's (context, images) as the chat the model was trained on: images first, then the text."""
    messages = chat(context)
    images = [v if isinstance(v, Image.Image) else IMAGE_FILES.rgb(v) for v in (visuals or [])]
    rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]  # convert would copy an RGB one
    messages[0]["content"][:0] = [{"type": "image", "image": im} for im in rgb]
    return messages


@register_model("study-vlm")
class StudyLM(LM):
    """An in-memory (model, processor) pair as an lm-eval model, with text and image requests.

    lm-eval's own `hf-multimodal` never stores a processor passed in memory, and formats prompts its own
    way; this class sends every request through forgetting.models.batch, the path training and TRL use.

    With score_answers, generating for a tiny-world task also scores each document's right answer on the same
    forward over its prompt (forgetting/inference.py:generate_and_score): answer_logprobs() gives their mean log-
    probability per benchmark (the learning dynamics' answer log-probability)."""

    MULTIMODAL = True

    def __init__(
        self, model=None, processor=None, batch_size: int = 32, max_length: int = 2048, score_answers: bool = False
    ):
        super().__init__()
        self.model, self.processor = model, processor
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.score_answers = score_answers
        self.answer_scores: dict[str, list[float]] = defaultdict(list)  # task -> the right answers' log-probs

    def answer_logprobs(self) -> dict[str, float]:
        """The mean log-probability of the right answers of each scored tiny-world benchmark, by name."""
        return {task: sum(v) / len(v) for task, v in sorted(self.answer_scores.items())}

    def scored_answer(self, request) -> str | None:
        """The right answer to score with a request's generation: a tiny-world task's, when scoring answers."""
        task = str(request.task_name or "")
        if self.score_answers and task.removeprefix(f"{TINY_WORLD}_") in PRIOR_TASKS and "answer" in request.doc:
            return str(request.doc["answer"])
        return None

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.processor.tokenizer, "name_or_path", "study-vlm")

    def complete(
        self, conversations: list[list[dict]], max_new_tokens: int, settings: dict, answers: list | None = None
    ) -> tuple[list[str], list]:
        """Completions for prompt conversations, and the Scored of each answer given (None where none is); the one
        place that calls the model for generation."""
        return generate_and_score(
            self.model, self.processor, conversations, answers, max_new_tokens, self.batch_size,
            common_prefix=True, **settings,
        )  # fmt: skip

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups = defaultdict(list)  # requests with the same generation settings run together
        for index, request in enumerate(requests):
            context, kwargs, *rest = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            do_sample = bool(kwargs.pop("do_sample", False)) and float(kwargs.get("temperature", 0) or 0) > 0
            chosen = {k: kwargs[k] for k in ("temperature", "top_p", "top_k") if k in kwargs}
            settings = sampling(**chosen) if do_sample else {"do_sample": False}
            visuals = rest[0].get("visual") if rest else None
            key = (tuple(until), max_new, json.dumps(settings, sort_keys=True))
            groups[key].append((index, request_conversation(context, visuals), self.scored_answer(request)))
        texts: list[str] = [""] * len(requests)
        for (until, max_new, settings), members in groups.items():
            answers = [a for _, _, a in members]
            outputs, scored = self.complete([c for _, c, _ in members], max_new, json.loads(settings), answers)
            for (index, _, _), text, score in zip(members, outputs, scored, strict=True):
                for stop in until:
                    text = text.split(stop, 1)[0] if stop else text
                texts[index] = text
                if score is not None:
                    self.answer_scores[requests[index].task_name].append(score.total)
        return texts

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        prompts, continuations = [], []
        for request in requests:
            context, continuation, *rest = request.args
            prompts.append(request_conversation(context, rest[0].get("visual") if rest else None))
            continuations.append(continuation)
        scored = continuation_logprobs(
            self.model, self.processor, prompts, continuations, self.batch_size, common_prefix=True
        )
        return [(logp, greedy) for logp, _, greedy in scored]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Plain-text log-likelihood (perplexity benchmarks): disjoint windows of max_length tokens, the
        first token of each window conditioned on the end of the previous one."""
        tokenizer, results = self.processor.tokenizer, []
        for request in requests:
            ids = tokenizer(request.args[0], add_special_tokens=False)["input_ids"]
            ids = ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []) + ids
            total = 0.0
            for start in range(1, len(ids), self.max_length - 1):
                window = torch.tensor([ids[start - 1 : start + self.max_length - 1]], device=self.model.device)
                logp = torch.log_softmax(self.model(input_ids=window).logits[0, :-1].float(), dim=-1)
                total += logp.gather(-1, window[0, 1:].unsqueeze(-1)).sum().item()
            results.append(total)
        return results


# ---------------------------------------------------------------------------------------------------------
# Running benchmarks: one results schema


@dataclass(frozen=True)
class BenchmarkData:
    """Where the generated data of the shipped benchmarks lie (what TaskManager metadata carries)."""

    tiny_world_dir: str
    puzzles_dir: str
    prompt_style: str = "direct"

    @property
    def puzzle_benchmark(self) -> str:
        return PUZZLE_BENCHMARKS[self.prompt_style]


@functools.lru_cache(maxsize=4)
def task_manager(benchmarks: tuple[str, ...], data: BenchmarkData):
    """lm-eval's TaskManager over the shipped YAMLs; lm-eval's built-in index (about 20 s to build) only
    when a benchmark is not one of ours. Kept per process: every model of a study uses the same."""
    from lm_eval.tasks import TaskManager

    metadata = {"tiny_world_dir": data.tiny_world_dir, "puzzles_dir": data.puzzles_dir}
    manager = TaskManager(include_path=str(LM_EVAL_TASKS), include_defaults=False, metadata=metadata)
    if any(b not in manager.all_tasks for b in benchmarks):
        manager = TaskManager(include_path=str(LM_EVAL_TASKS), include_defaults=True, metadata=metadata)
        unknown = [b for b in benchmarks if b not in manager.all_tasks]
        if unknown:
            raise EvaluationError(f"evaluation.benchmarks: unknown lm-eval task or group {unknown}")
    return manager


def check_benchmarks(benchmarks: list[str]) -> None:
    """Fail fast on an unknown benchmark name, before any training (data folders are not needed to look)."""
    task_manager(tuple(benchmarks), BenchmarkData("", ""))


def _skip_what_the_study_does_not_read() -> None:
    """Two things lm-eval's simple_evaluate does on every call that the study never reads, about 0.8 s of a
    5 s evaluation of the tiny profile: collecting the machine's environment into its results (torch's
    collect_env, which starts subprocesses; a study records its own environment) and hashing every image of
    the logged samples (LMEVAL_HASHMM; the study reads the samples' responses, not their images)."""
    import lm_eval.evaluator

    lm_eval.evaluator.LMEVAL_HASHMM = False
    lm_eval.evaluator.add_env_info = lambda results: None


def run_benchmarks(
    lm: LM, benchmarks: list[str], data: BenchmarkData, limit: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Evaluate lm on benchmarks (tasks or groups) through lm-eval: benchmark_rows of what it returns."""
    from lm_eval import simple_evaluate

    _skip_what_the_study_does_not_read()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # a warning per custom_dataset task otherwise
    out = simple_evaluate(
        model=lm,
        tasks=list(benchmarks),
        task_manager=task_manager(tuple(benchmarks), data),
        limit=limit,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        verbosity="ERROR",
    )
    return benchmark_rows(out, benchmarks)


def compared(name: str, out: dict) -> list[str]:
    """The benchmarks a requested task or group stands for: a task itself; a group lm-eval scores as one (its
    aggregate_metric_list: mmmu_val's 30 subjects give one score, weighted by their sizes) itself; a group that
    only collects tasks (tiny_world) its members, each counted as if requested."""
    if name in out.get("groups", {}) or name not in out.get("group_subtasks", {}):
        return [name]
    return [b for member in out["group_subtasks"][name] for b in compared(member, out)]


def score_metric(result: dict) -> str:
    """The metric a benchmark is scored by: the first lm-eval reports for it (its metric_list's order), format_ok
    aside. (lm-eval's configs give a metric defined as a function by its source code, so names come from here.)"""
    for key in result:
        name, sep, _ = key.partition(",")
        if sep and not name.endswith("_stderr") and name != "format_ok":
            return name
    raise EvaluationError(f"lm-eval reported no score for {result.get('name', result)}")


def benchmark_rows(out: dict, requested: list[str]) -> tuple[list[dict], list[dict]]:
    """One row per compared benchmark, {benchmark, metric, value, stderr, n, format_failures}, and the per-sample
    records {benchmark, task, doc_id, target, response, score, format_ok} of its tasks. format_ok: the task's own
    check (the shipped tasks), else the study's for the task's family (forgetting/answer_formats.py), else None;
    format_failures counts the samples out of format, None when a task has no check."""
    benchmarks = dict.fromkeys(b for name in requested for b in compared(name, out))
    benchmark_of = {task: b for b in benchmarks for task in _tasks_of(b, out)}
    samples = []
    for task, task_samples in out["samples"].items():
        if task not in benchmark_of:
            continue
        metric, check = score_metric(out["results"][task]), format_check(task)
        for s in task_samples:
            response = s["filtered_resps"][0] if s["filtered_resps"] else ""
            response = response if isinstance(response, str) else str(response)
            ok = s.get("format_ok", check(s["doc"], response) if check else None)
            samples.append(
                {
                    "benchmark": benchmark_of[task],
                    "task": task,
                    "doc_id": s["doc_id"],
                    "target": s["target"],
                    "response": response,
                    "score": float(s[metric]),
                    "format_ok": None if ok is None else float(ok),
                }
            )
    rows = []
    for benchmark in benchmarks:
        result = out["results"][benchmark]
        metric = score_metric(result)
        checked = [s["format_ok"] for s in samples if s["benchmark"] == benchmark]
        stderr = result.get(f"{metric}_stderr,none")
        rows.append(
            {
                "benchmark": benchmark,
                "metric": metric,
                "value": float(result[f"{metric},none"]),
                "stderr": float(stderr) if isinstance(stderr, int | float) else math.nan,
                "n": sum(int(out["n-samples"][t]["effective"]) for t in _tasks_of(benchmark, out)),
                "format_failures": None if None in checked else round(sum(1 - ok for ok in checked)),
            }
        )
    return sorted(rows, key=lambda r: r["benchmark"]), samples


def _tasks_of(name: str, out: dict) -> list[str]:
    """The tasks (leaves) under a task or group."""
    members = out.get("group_subtasks", {}).get(name)
    return [name] if members is None else [t for m in members for t in _tasks_of(m, out)]
