"""Evaluation: every benchmark runs through lm-eval, the harness researchers already trust.

- The tiny world's benchmarks (the held-out split of each prior-knowledge task) and the puzzle test split
  are lm-eval task YAMLs shipped in assets/lm_eval/ over the data each study generates; real runs name
  lm-eval's own tasks (mmmu_val, chartqa, text tasks), which pass through unchanged.
- `StudyLM` is the one lm-eval model class (registered as `study-vlm`): batched generation over images and
  text through the same processor path as training, for the tiny model and Qwen2.5-VL alike; also
  log-likelihoods, for multiple-choice benchmarks and the learning-dynamics analysis.
- Each benchmark row follows one schema: {benchmark, metric, value, stderr, n, format_failures}; the
  format check counts answers outside the benchmark's answer format (format collapse, not ignorance).

    python -m flows.evaluate --profile tiny     # evaluate the base model and every trained arm
"""

import functools
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from PIL import Image

from tasks.config import ConfigError
from tasks.models import batch, chat
from tasks.puzzles import PuzzleDataset, format_answer, parse_answer, score_answer
from tasks.storage import write_once, write_text_once
from tasks.world import grade

LM_EVAL_TASKS = Path(__file__).resolve().parent.parent / "assets" / "lm_eval"
TINY_WORLD = "tiny_world"
PUZZLE_BENCHMARKS = {"direct": "jigsaw", "think": "jigsaw_think"}  # the puzzle test split, by prompt style


class EvaluationError(ConfigError):
    """A benchmark cannot run: unknown name, missing data."""


# ---------------------------------------------------------------------------------------------------------
# Generation and log-likelihood, batched through the processor (the path training and TRL use)


@torch.no_grad()
def generate(
    model, processor, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 64, **sampling
) -> list[str]:
    """Completions (text after the prompt, special tokens dropped) for prompt-only conversations, in batches."""
    was_training = model.training
    model.eval()
    texts = []
    for i in range(0, len(conversations), batch_size):
        inputs = batch(processor, conversations[i : i + batch_size], train=False)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        texts += processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return texts


@torch.no_grad()
def continuation_logprobs(
    model, processor, prompts: list[list[dict]], continuations: list[str], batch_size: int = 64
) -> list[tuple[float, int, bool]]:
    """For each (prompt conversation, continuation text): the summed log-probability of the continuation's
    tokens right after the opened assistant turn (what `generate` would continue from), their count, and
    whether greedy decoding would produce them. Chat-template tokens (<|im_end|>) are not counted."""
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    out = []
    for i in range(0, len(prompts), batch_size):
        inputs = batch(processor, prompts[i : i + batch_size], train=False)
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations[i : i + batch_size]]
        width = max(len(x) for x in ids)
        if width == 0:
            out += [(0.0, 0, True)] * len(ids)
            continue
        pad = tokenizer.pad_token_id or 0
        cont = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        prompt_len = inputs["input_ids"].shape[1]
        for key, value in list(inputs.items()):  # right-pad every per-token tensor with the continuation
            if key == "input_ids":
                inputs[key] = torch.cat([value, cont], dim=1)
            elif key == "attention_mask":
                inputs[key] = torch.cat([value, mask], dim=1)
            elif value.dim() == 2 and value.shape[1] == prompt_len and key not in ("pixel_values", "image_grid_thw"):
                inputs[key] = torch.cat([value, torch.zeros_like(cont, dtype=value.dtype)], dim=1)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        logits = model(**inputs).logits[:, prompt_len - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = cont.to(logp.device)
        token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        greedy = logits.argmax(-1) == target
        mask = mask.to(logp.device).bool()
        for row in range(len(ids)):
            m = mask[row]
            out.append((token_logp[row][m].sum().item(), int(m.sum()), bool(greedy[row][m].all())))
    model.train(was_training)
    return out


def puzzle_scores(
    model,
    processor,
    dataset: PuzzleDataset,
    style: str = "direct",
    limit: int | None = None,
    samples: int = 0,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """On the test split: greedy exact accuracy, valid-permutation rate and mean reward; with samples > 0
    also pass@samples and the valid rate of samples at temperature 1. (The quick probe pretraining and
    each arm's final log use; the study's numbers come from the lm-eval `jigsaw` task.)"""
    records = dataset.records("test")[:limit]
    conversations = [chat(r[f"prompt_{style}"], dataset.image(r)) for r in records]
    answers = [r["answer"] for r in records]
    n_tiles = len(answers[0])
    greedy = generate(model, processor, conversations, max_new_tokens, do_sample=False)
    scores = {
        "puzzle.exact": sum(parse_answer(g, n_tiles) == a for g, a in zip(greedy, answers, strict=True)) / len(records),
        "puzzle.valid": sum(parse_answer(g, n_tiles) is not None for g in greedy) / len(records),
        "puzzle.reward": sum(score_answer(g, a, style).total for g, a in zip(greedy, answers, strict=True))
        / len(records),
    }
    if samples:
        torch.manual_seed(seed)
        repeated = [c for c in conversations for _ in range(samples)]
        sampled = generate(model, processor, repeated, max_new_tokens, do_sample=True, temperature=1.0)
        groups = [sampled[i * samples : (i + 1) * samples] for i in range(len(records))]
        scores[f"puzzle.pass_at_{samples}"] = sum(
            any(parse_answer(s, n_tiles) == a for s in group) for group, a in zip(groups, answers, strict=True)
        ) / len(records)
        scores["puzzle.sampled_valid"] = sum(parse_answer(s, n_tiles) is not None for s in sampled) / len(sampled)
    return scores


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
    id, prompt, answer, format (see tasks.world.grade) and an absolute image path ("" for text only)."""
    import datasets

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
        with open(path) as f:
            rows = [json.loads(line) for line in f]
        for row in rows:
            row["image"] = str(Path(tiny_world_dir) / row["image"]) if row["image"] else ""
    return {"test": datasets.Dataset.from_list(rows)}


def doc_to_image(doc: dict) -> list[Image.Image]:
    return [Image.open(doc["image"]).convert("RGB")] if doc["image"] else []


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
    images = [v if isinstance(v, Image.Image) else Image.open(v) for v in (visuals or [])]
    messages[0]["content"][:0] = [{"type": "image", "image": im.convert("RGB")} for im in images]
    return messages


@register_model("study-vlm")
class StudyLM(LM):
    """An in-memory (model, processor) pair as an lm-eval model, with text and image requests.

    lm-eval's own `hf-multimodal` never stores a processor passed in memory, and formats prompts its own
    way; this class sends every request through tasks.models.batch, the path training and TRL use."""

    MULTIMODAL = True

    def __init__(self, model=None, processor=None, batch_size: int = 32, max_length: int = 2048):
        super().__init__()
        self.model, self.processor = model, processor
        self.batch_size, self.max_length = int(batch_size), int(max_length)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.processor.tokenizer, "name_or_path", "study-vlm")

    def complete(self, conversations: list[list[dict]], max_new_tokens: int, sampling: dict) -> list[str]:
        """Completions for prompt conversations; the one place that calls the model for generation."""
        return generate(self.model, self.processor, conversations, max_new_tokens, self.batch_size, **sampling)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups = defaultdict(list)  # requests with the same generation settings run together
        for index, request in enumerate(requests):
            context, kwargs, *rest = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            do_sample = bool(kwargs.pop("do_sample", False)) and float(kwargs.get("temperature", 0) or 0) > 0
            sampling = {"do_sample": do_sample}
            if do_sample:
                sampling.update({k: kwargs[k] for k in ("temperature", "top_p", "top_k") if k in kwargs})
            visuals = rest[0].get("visual") if rest else None
            key = (tuple(until), max_new, json.dumps(sampling, sort_keys=True))
            groups[key].append((index, request_conversation(context, visuals)))
        texts: list[str] = [""] * len(requests)
        for (until, max_new, sampling), members in groups.items():
            outputs = self.complete([c for _, c in members], max_new, json.loads(sampling))
            for (index, _), text in zip(members, outputs, strict=True):
                for stop in until:
                    text = text.split(stop, 1)[0] if stop else text
                texts[index] = text
        return texts

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        prompts, continuations = [], []
        for request in requests:
            context, continuation, *rest = request.args
            prompts.append(request_conversation(context, rest[0].get("visual") if rest else None))
            continuations.append(continuation)
        scored = continuation_logprobs(self.model, self.processor, prompts, continuations, self.batch_size)
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


def run_benchmarks(
    lm: LM, benchmarks: list[str], data: BenchmarkData, limit: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Evaluate lm on benchmarks (tasks or groups) through lm-eval. Returns one row per leaf benchmark
    {benchmark, metric, value, stderr, n, format_failures} and the per-sample records
    {benchmark, doc_id, target, response, score, format_ok}."""
    from lm_eval import simple_evaluate

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
    rows, samples = [], []
    for name, task_samples in out["samples"].items():
        result = out["results"][name]
        metric = out["configs"][name]["metric_list"][0]["metric"]
        n = out["n-samples"][name]["effective"]
        ok = result.get("format_ok,none")
        stderr = result.get(f"{metric}_stderr,none")
        rows.append(
            {
                "benchmark": name,
                "metric": metric,
                "value": float(result[f"{metric},none"]),
                "stderr": float(stderr) if isinstance(stderr, int | float) else math.nan,
                "n": int(n),
                "format_failures": round(n * (1 - ok)) if ok is not None else None,
            }
        )
        for s in task_samples:
            response = s["filtered_resps"][0] if s["filtered_resps"] else ""
            samples.append(
                {
                    "benchmark": name,
                    "doc_id": s["doc_id"],
                    "target": s["target"],
                    "response": response if isinstance(response, str) else str(response),
                    "score": float(s[metric]),
                    "format_ok": float(s["format_ok"]) if "format_ok" in s else None,
                }
            )
    return sorted(rows, key=lambda r: r["benchmark"]), samples


def answer_logprobs(model, processor, data: BenchmarkData, benchmarks: list[str], limit: int | None, batch_size: int):
    """Mean log-probability of the right answers of the tiny world's held-out benchmarks (dynamics (c))."""
    means = {}
    for name in benchmarks:
        if not name.startswith(f"{TINY_WORLD}_"):
            continue
        docs = load_docs(name.removeprefix(f"{TINY_WORLD}_"), tiny_world_dir=data.tiny_world_dir)["test"]
        docs = docs.select(range(min(limit or len(docs), len(docs))))
        prompts = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]
        scored = continuation_logprobs(model, processor, prompts, [d["answer"] for d in docs], batch_size)
        means[name] = sum(logp for logp, _, _ in scored) / len(scored)
    return means


@torch.no_grad()
def parameter_distance(model, base_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 distance of the model's weights from the base's, absolute and relative to the base's norm. A LoRA
    model is merged first, so the distance is that of the weights it actually runs with."""
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    state = model.state_dict()
    missing = [k for k in base_state if k not in state]
    if missing:
        raise EvaluationError(f"model and base differ in parameters, e.g. {missing[:3]}")
    diff = sum(float((state[k].float().cpu() - v.float()).pow(2).sum()) for k, v in base_state.items())
    norm = sum(float(v.float().pow(2).sum()) for v in base_state.values())
    return {"l2": math.sqrt(diff), "relative": math.sqrt(diff / norm) if norm else math.nan}


def evaluate_model(
    model,
    processor,
    benchmarks: list[str],
    data: BenchmarkData,
    limit: int | None = None,
    batch_size: int = 32,
    base_state: dict[str, torch.Tensor] | None = None,
) -> tuple[dict, list[dict]]:
    """Everything the study measures of one model: the puzzle and every benchmark through lm-eval, the
    log-probability of held-out prior answers, and (given the base's weights) the distance from the base."""
    started = time.perf_counter()
    names = [data.puzzle_benchmark, *benchmarks]
    rows, samples = run_benchmarks(StudyLM(model, processor, batch_size), names, data, limit)
    record = {
        "benchmarks": rows,
        "puzzle_benchmark": data.puzzle_benchmark,
        "answer_logprob": answer_logprobs(model, processor, data, [r["benchmark"] for r in rows], limit, batch_size),
        "param_distance": parameter_distance(model, base_state) if base_state is not None else None,
    }
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record, samples


# ---------------------------------------------------------------------------------------------------------
# The evaluation stage: which models, where their results lie, and the base model's view of each arm's data.
# Results are content-addressed (<output>/evals/<arm>-<step>-<hash>/), so a rerun evaluates nothing twice.

EVAL_VERSION = 1  # bump when what an evaluation record holds changes
DATA_NLL_ITEMS = 512  # training examples scored per arm for the base-model NLL


@dataclass(frozen=True)
class EvalTarget:
    """One model to evaluate: the base (step 0) or an arm's checkpoint or final model."""

    arm: str
    step: int
    path: str


def eval_targets(config, base: str, arms: dict) -> list[EvalTarget]:
    """The base, then per arm its checkpoints every evaluation.every steps and its final model."""
    targets = [EvalTarget("base", 0, base)]
    for arm, result in arms.items():
        final = getattr(config.arms, arm).steps
        for checkpoint in result.checkpoints:
            step = int(checkpoint.rsplit("-", 1)[-1])
            if step % config.evaluation.every == 0 and step < final:
                targets.append(EvalTarget(arm, step, checkpoint))
        targets.append(EvalTarget(arm, final, str(result.final)))
    return targets


def eval_dir(config, target: EvalTarget, data: BenchmarkData, base: str) -> Path:
    from tasks.config import stable_hash
    from tasks.models import model_fingerprint

    spec = {
        "model": target.path,
        "base": model_fingerprint(base),
        "benchmarks": config.evaluation.benchmarks,
        "limit": config.evaluation.limit,
        "data": vars(data),
        "version": EVAL_VERSION,
    }
    return config.output.path / "evals" / f"{target.arm}-{target.step}-{stable_hash(spec)[:10]}"


_BASE_STATE: dict[str, dict[str, torch.Tensor]] = {}


def base_state(config, base: str) -> dict[str, torch.Tensor]:
    """The base model's weights on CPU (kept for the process: every evaluation compares with them)."""
    if base not in _BASE_STATE:
        from tasks.models import load_model

        model, _ = load_model(config.model, base, trainable=False)
        _BASE_STATE.clear()
        _BASE_STATE[base] = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    return _BASE_STATE[base]


def evaluate_target(config, target: EvalTarget, data: BenchmarkData, base: str) -> Path:
    """Evaluate one model unless its results exist; returns the folder with evaluation.json and samples.jsonl."""
    from tasks.models import load_model

    out = eval_dir(config, target, data, base)
    if (out / "evaluation.json").is_file():
        return out
    model, processor = load_model(config.model, target.path, trainable=False)
    ev = config.evaluation
    record, samples = evaluate_model(
        model, processor, ev.benchmarks, data, ev.limit, ev.batch_size, base_state(config, base)
    )
    record = {"arm": target.arm, "step": target.step, "model": target.path, **record}
    with write_once(out) as tmp:
        (tmp / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        (tmp / "evaluation.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


def data_nll(config, base: str, arm: str, training_data: Path, dataset: PuzzleDataset, load_base=None) -> dict:
    """Per-token negative log-likelihood under the BASE model of the completions an arm trained on (answer
    tokens only; up to DATA_NLL_ITEMS examples, evenly spaced), cached beside the data. load_base() gives the
    base (model, processor) when it must be scored: pass a cached loader to score several arms with one load."""
    from tasks.config import stable_hash
    from tasks.models import load_model, model_fingerprint

    # Keyed on the base's content: SFT's data (the puzzles' ground truth) is shared by studies of other bases.
    key = stable_hash([model_fingerprint(base), DATA_NLL_ITEMS, EVAL_VERSION])
    path = training_data.with_name(f"base_nll-{key[:10]}.json")
    if path.is_file():
        return json.loads(path.read_text())
    with open(training_data) as f:
        rows = [json.loads(line) for line in f]
    if not rows:
        raise EvaluationError(f"{arm}: no training data in {training_data}")
    stride = max(1, len(rows) // DATA_NLL_ITEMS)
    rows = rows[::stride][:DATA_NLL_ITEMS]
    style = config.arms.sft.prompt_style
    records = {r["id"]: r for r in dataset.records("train")}
    prompts = [chat(records[r["puzzle_id"]][f"prompt_{style}"], dataset.image(records[r["puzzle_id"]])) for r in rows]
    model, processor = (load_base or (lambda: load_model(config.model, base, trainable=False)))()
    scored = continuation_logprobs(model, processor, prompts, [r["completion"] for r in rows])
    tokens = sum(n for _, n, _ in scored)
    result = {
        "arm": arm,
        "examples": len(rows),
        "tokens": tokens,
        "nll_per_token": -sum(logp for logp, _, _ in scored) / max(tokens, 1),
        "nll_per_example": -sum(logp for logp, _, _ in scored) / len(scored),
        "greedy_share": sum(g for _, _, g in scored) / len(scored),  # the base would have answered exactly this
    }
    write_text_once(path, json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------------------------------------------
# Prefect wrapper


def evaluation_task(config, target: EvalTarget, data: BenchmarkData, base: str) -> Path:
    """evaluate_target as a Prefect task materializing the evaluation folder (lineage: the model evaluated)."""
    from prefect.assets import materialize

    from assets import evaluation

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
