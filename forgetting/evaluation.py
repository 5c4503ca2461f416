"""Evaluation: everything the study measures of one model (every benchmark through lm-eval, the
log-probability of held-out prior answers, the distance from the base), which models a study evaluates, where
their results lie, and the base model's view of each arm's training data.

    python -m flows.evaluate --profile tiny     # evaluate the base model and every trained arm
"""

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetting.arms import arm_style, arm_styles
from forgetting.benchmarks import (
    PUZZLE_BENCHMARKS,
    BenchmarkData,
    EvaluationError,
    StudyLM,
    doc_to_image,
    load_docs,
    request_conversation,
    run_benchmarks,
)
from forgetting.inference import PromptRun, sampling, token_logprobs
from forgetting.models import chat, load_model, model_fingerprint
from forgetting.predictors import data_sample, weighted_mean, weighted_per_token
from forgetting.puzzle_data import PuzzleDataset
from forgetting.puzzles import parse_answer, score_answer, well_formed_think
from forgetting.storage import (
    one_maker,
    product_dir,
    read_json,
    read_json_lines,
    stable_hash,
    write_once,
    write_text_once,
)


def puzzle_scores(
    model,
    processor,
    dataset: PuzzleDataset,
    style: str = "direct",
    limit: int | None = None,
    samples: int = 0,
    seed: int = 0,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
) -> dict[str, float]:
    """On the test split (its first `limit` puzzles), through the study's own lm-eval puzzle benchmark, so the
    number is the one an evaluation reports: greedy exact accuracy, valid-permutation rate (its format check)
    and mean reward; in think style also the share of well-formed `<think>...</think><answer>...</answer>`
    answers. With samples > 0 also pass@samples and the valid (and well-formed) rate of samples at temperature,
    at most max_new_tokens each, graded by the same score_answer."""
    data = BenchmarkData("", str(dataset.path), style)
    lm = StudyLM(model, processor, batch_size=64)
    rows, items = run_benchmarks(lm, [data.puzzle_benchmark], data, limit)
    (row,) = rows
    rewards = [score_answer(s["response"], [int(x) for x in s["target"].split()], style).total for s in items]
    scores = {
        "puzzle.exact": row["value"],
        "puzzle.valid": 1 - row["format_failures"] / row["n"],
        "puzzle.reward": sum(rewards) / len(rewards),
    }
    if style == "think":
        scores["puzzle.well_formed"] = sum(well_formed_think(s["response"]) for s in items) / len(items)
    if samples:
        records = dataset.records("test")[:limit]
        torch.manual_seed(seed)
        _, prompts = held_out_prompts("jigsaw", data, limit)
        sampled, _ = lm.complete([c for c in prompts for _ in range(samples)], max_new_tokens, sampling(temperature))
        groups = [sampled[i * samples : (i + 1) * samples] for i in range(len(records))]
        graded = [[score_answer(text, r["answer"], style) for text in g] for g, r in zip(groups, records, strict=True)]
        scores[f"puzzle.pass_at_{samples}"] = sum(any(s.exact for s in g) for g in graded) / len(records)
        n_tiles = len(records[0]["answer"])
        scores["puzzle.sampled_valid"] = sum(parse_answer(text, n_tiles) is not None for text in sampled) / len(sampled)
        if style == "think":
            scores["puzzle.sampled_well_formed"] = sum(map(well_formed_think, sampled)) / len(sampled)
    return scores


def held_out_prompts(benchmark: str, data: BenchmarkData, limit: int | None) -> tuple[list[dict], list[list[dict]]]:
    """The first `limit` documents of a shipped benchmark ('jigsaw' or a tiny-world task) and their prompts as the
    conversations lm-eval sends."""
    docs = load_docs(benchmark, data.tiny_world_dir, data.puzzles_dir, data.prompt_style)["test"]
    docs = docs.select(range(min(limit or len(docs), len(docs))))
    return list(docs), [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]


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


KL_SAMPLES = 2  # answers sampled per held-out puzzle prompt, for each direction of the KL
KL_SAMPLING = sampling(1.0)  # the policy itself, untruncated
KL_PROMPTS = 32  # held-out prompts a run: their samples drawn and the answers to them scored on one run of them
KEEP_BASE_RUNS = 1 << 28  # bytes of the base's prompt runs kept for every evaluation (a 7B model's are GBs: rerun)


def kl_runs(model, processor, prompts: list[list[dict]]) -> Iterator[PromptRun]:
    """The prompts run KL_PROMPTS at a time (forgetting/inference.py:PromptRun), each run made when it is reached."""
    for start in range(0, len(prompts), KL_PROMPTS):
        yield PromptRun(model, processor, prompts[start : start + KL_PROMPTS])


def per_prompt(answers: list[str]) -> list[list[str]]:
    """Answers KL_SAMPLES a prompt, in order, as lists per prompt."""
    return [answers[i : i + KL_SAMPLES] for i in range(0, len(answers), KL_SAMPLES)]


@dataclass(frozen=True)
class BaseSamples:
    """The base model's sampled answers to the held-out puzzle prompts (KL_SAMPLES each, in order) and its own
    log-probability of each: the forward KL's side that is the same for every model evaluated; and its runs of
    the prompts, to score every model's samples on (None where they were too large to keep: they run again)."""

    answers: list[str]
    logps: list[float]
    runs: list[PromptRun] | None = None


def base_samples(model, processor, prompts: list[list[dict]], max_new_tokens: int, seed: int = 0) -> BaseSamples:
    """KL_SAMPLES answers per prompt sampled from the base's own distribution (T 1, no top-k or top-p) and the base's
    log-probability of each, every run of KL_PROMPTS prompts sampled and scored on one run of them."""
    torch.manual_seed(seed)
    answers, logps, runs, size = [], [], [], 0
    for run in kl_runs(model, processor, prompts):
        drawn = run.sample(model, processor, KL_SAMPLES, max_new_tokens, **KL_SAMPLING)
        answers += drawn
        logps += [s.total for s in run.score(model, processor, per_prompt(drawn))]
        size += run.nbytes
        runs = [*runs, run] if runs is not None and size <= KEEP_BASE_RUNS else None
    return BaseSamples(answers, logps, runs)


def policy_kl(model, base_model, processor, prompts: list[list[dict]], base: BaseSamples, max_new_tokens: int):
    """Monte Carlo estimates over the prompts of forward E_x[KL(base || model)] (answers the base sampled) and
    reverse E_x[KL(model || base)] (answers the model samples), each the mean over samples of the difference of
    the two models' log-probabilities of the answer's tokens (summed over the answer; the end-of-turn token is
    not counted). Both models share the processor (the base's and its fine-tunes'). The model samples
    KL_SAMPLES answers per prompt (T 1, seed 0) and scores the base's and its own on one run of the prompts; the
    base scores the model's on its kept runs."""
    torch.manual_seed(0)
    forward, reverse, last = [], [], 0
    given, base_runs = per_prompt(base.answers), base.runs or kl_runs(base_model, processor, prompts)
    for run, base_run in zip(kl_runs(model, processor, prompts), base_runs, strict=True):
        first, last = last, last + len(run.conversations)  # the run's prompts
        own = per_prompt(run.sample(model, processor, KL_SAMPLES, max_new_tokens, **KL_SAMPLING))
        answers = [g + o for g, o in zip(given[first:last], own, strict=True)]  # a prompt's base answers, then its own
        both = [s.total for s in run.score(model, processor, answers)]
        mine = [lp for i, lp in enumerate(both) if i % (2 * KL_SAMPLES) < KL_SAMPLES]  # the base's answers
        mine_own = [lp for i, lp in enumerate(both) if i % (2 * KL_SAMPLES) >= KL_SAMPLES]
        theirs = [s.total for s in base_run.score(base_model, processor, own)]
        forward += [b - m for b, m in zip(base.logps[first * KL_SAMPLES : last * KL_SAMPLES], mine, strict=True)]
        reverse += [m - b for m, b in zip(mine_own, theirs, strict=True)]
    return {"forward": sum(forward) / len(forward), "reverse": sum(reverse) / len(reverse), "samples": len(reverse)}


def evaluate_model(
    model,
    processor,
    benchmarks: list[str],
    data: BenchmarkData,
    limit: int | None = None,
    batch_size: int = 32,
    base_state: dict[str, torch.Tensor] | None = None,
    base: tuple | None = None,
    other_styles: tuple[str, ...] = (),
) -> tuple[dict, list[dict]]:
    """Everything the study measures of one model: the puzzle (in data's prompt style, and in other_styles:
    the base, for arms of other styles) and every benchmark through lm-eval, the log-probability of held-out
    prior answers, and, given the base's weights, the distance from the base; given base = (base model, its
    samples of the puzzle prompts: BaseSamples), the KL divergences from it."""
    started = time.perf_counter()
    puzzles = list(dict.fromkeys([data.puzzle_benchmark, *(PUZZLE_BENCHMARKS[s] for s in other_styles)]))
    lm = StudyLM(model, processor, batch_size, score_answers=True)  # the right answers' log-probs on the way
    rows, samples = run_benchmarks(lm, [*puzzles, *benchmarks], data, limit)
    record = {
        "benchmarks": rows,
        "puzzle_benchmark": data.puzzle_benchmark,
        **({"puzzle_benchmarks": puzzles} if len(puzzles) > 1 else {}),
        "answer_logprob": lm.answer_logprobs(),
        "param_distance": parameter_distance(model, base_state) if base_state is not None else None,
    }
    if base is not None:
        base_model, base_samples = base
        _, prompts = held_out_prompts("jigsaw", data, limit)
        tokens = PUZZLE_ANSWER_TOKENS[data.prompt_style]
        record["policy_kl"] = policy_kl(model, base_model, processor, prompts, base_samples, tokens)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record, samples


# ---------------------------------------------------------------------------------------------------------
# The evaluation stage: which models, where their results lie, and the base model's view of each arm's data.
# Results are content-addressed (<output>/evals/<arm>-<step>-<hash>/), so a rerun evaluates nothing twice.

EVAL_VERSION = 2  # bump when what an evaluation record holds changes (2: policy_kl; per-example data NLL)
# Longest puzzle answer sampled for the KL estimates, by prompt style: the direct benchmark's max_gen_toks, and
# room for a tiny model's reasoning (the think benchmark's own limit, 1024, is for real models).
PUZZLE_ANSWER_TOKENS = {"direct": 32, "think": 96}
DATA_NLL_ITEMS = 512  # training examples scored per arm for the base-model NLL


@dataclass(frozen=True)
class EvalTarget:
    """One model to evaluate: the base (step 0) or an arm's checkpoint or final model, on the puzzle in the
    arm's prompt style (the base: in every style an arm uses, the first one its main)."""

    arm: str
    step: int
    path: str
    styles: tuple[str, ...] = ("direct",)

    def data(self, data: BenchmarkData) -> BenchmarkData:
        """The benchmark data with this target's main prompt style."""
        return dataclasses.replace(data, prompt_style=self.styles[0])


def eval_targets(config, base: str, arms: dict) -> list[EvalTarget]:
    """The base, then per arm its checkpoints every evaluation.every steps and at arms.checkpoint_steps, and
    its final model."""
    targets = [EvalTarget("base", 0, base, tuple(arm_styles(config)))]
    for arm, result in arms.items():
        final, styles = getattr(config.arms, arm).steps, (arm_style(config, arm),)
        for checkpoint in result.checkpoints:
            step = int(checkpoint.rsplit("-", 1)[-1])
            chosen = step % config.evaluation.every == 0 or step in config.arms.checkpoint_steps
            if chosen and step < final:
                targets.append(EvalTarget(arm, step, checkpoint, styles))
        targets.append(EvalTarget(arm, final, str(result.final), styles))
    return targets


def eval_dir(config, target: EvalTarget, data: BenchmarkData, base: str) -> Path:
    spec = {
        "model": target.path,
        "base": model_fingerprint(base),
        "benchmarks": config.evaluation.benchmarks,
        "limit": config.evaluation.limit,
        "data": vars(target.data(data)),
        **({"styles": list(target.styles)} if len(target.styles) > 1 else {}),
        "version": EVAL_VERSION,
    }
    return product_dir(config.output.path, "evals", f"{target.arm}-{target.step}-{stable_hash(spec)[:10]}")


_BASE: dict[str, tuple] = {}
_BASE_SAMPLES: dict[tuple, BaseSamples] = {}


def base_model(config, base: str) -> tuple:
    """The base (model, processor), loaded once a process on the study's device and in its dtype: every evaluation
    compares with it, and the data NLL scores with it (one copy of a 7B model, no float32 one beside it)."""
    key = base + config.model.model_dump_json()  # the same weights in another dtype are another copy
    if key not in _BASE:
        _BASE.clear()
        _BASE_SAMPLES.clear()
        _BASE[key] = load_model(config.model, base, trainable=False)
    return _BASE[key]


def base_reference(config, base: str, data: BenchmarkData) -> tuple[dict[str, torch.Tensor], object, BaseSamples]:
    """The base model's weights (its own tensors, not a copy), the base model itself, and its sampled answers to
    the held-out puzzle prompts in data's prompt style with their log-probabilities: what every evaluation compares
    with, made once a process (the samples once per style)."""
    model, processor = base_model(config, base)
    key = (base, data.tiny_world_dir, data.puzzles_dir, config.evaluation.limit, data.prompt_style)
    if key not in _BASE_SAMPLES:
        _, prompts = held_out_prompts("jigsaw", data, config.evaluation.limit)
        _BASE_SAMPLES[key] = base_samples(model, processor, prompts, PUZZLE_ANSWER_TOKENS[data.prompt_style])
    return model.state_dict(), model, _BASE_SAMPLES[key]


def evaluate_target(config, target: EvalTarget, data: BenchmarkData, base: str, wait: bool = True) -> Path | None:
    """Evaluate one model unless its results exist; returns the folder with evaluation.json and samples.jsonl. While
    another process evaluates it, waits for that (seeds side by side evaluate their common base once), or with
    wait=False returns None at once."""
    out = eval_dir(config, target, data, base)
    with one_maker(out, wait) as mine:
        if not mine:
            return None
        if not (out / "evaluation.json").is_file():
            _evaluate_into(out, config, target, data, base)
    return out


def _evaluate_into(out: Path, config, target: EvalTarget, data: BenchmarkData, base: str) -> None:
    model, processor = load_model(config.model, target.path, trainable=False)
    ev, data = config.evaluation, target.data(data)
    state, base_model, base_samples = base_reference(config, base, data)
    record, samples = evaluate_model(
        model,
        processor,
        ev.benchmarks,
        data,
        ev.limit,
        ev.batch_size,
        state,
        (base_model, base_samples),
        other_styles=target.styles[1:],
    )
    record = {"arm": target.arm, "step": target.step, "model": target.path, **record}
    with write_once(out) as tmp:
        (tmp / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        (tmp / "evaluation.json").write_text(json.dumps(record, indent=1) + "\n")


DATA_NLL_VERSION = 3  # 2: split into reasoning and answer tokens; 3: a sample stratified by step, weighted


def answer_start(completion: str, style: str) -> int:
    """Where a completion's answer begins: at its last <answer> tag; a completion without one is all answer in
    the direct style and all reasoning in the think style (it never got to answer)."""
    at = completion.rfind("<answer>")
    if at >= 0:
        return at
    return 0 if style == "direct" else len(completion)


def data_nll(
    config, base: str, arm: str, training_data: Path, dataset: PuzzleDataset, wait: bool = True
) -> dict | None:
    """Per-token negative log-likelihood under the BASE model (base_model: the evaluations' copy) of the
    completions an arm trained on, under the arm's own prompt style (the completion's tokens, all of them and split
    into reasoning and answer tokens; up to DATA_NLL_ITEMS examples, a sample stratified by training step,
    forgetting/predictors.py:data_sample, also one by one), cached beside the data. While another process makes
    it, waits for that, or with wait=False returns None at once."""
    path = data_nll_path(base, training_data)
    with one_maker(path, wait) as mine:
        if not mine:
            return None
        if not path.is_file():
            write_text_once(path, json.dumps(nll_of_data(config, base, arm, training_data, dataset), indent=1) + "\n")
    return read_json(path)


def data_nll_path(base: str, training_data: Path) -> Path:
    """Where data_nll keeps its result: beside the data, keyed on the base's content (SFT's data, the puzzles' ground
    truth, is shared by studies of other bases)."""
    key = stable_hash([model_fingerprint(base), DATA_NLL_ITEMS, EVAL_VERSION, DATA_NLL_VERSION])
    return training_data.with_name(f"base_nll-{key[:10]}.json")


def nll_of_data(
    config, base: str, arm: str, training_data: Path, dataset: PuzzleDataset, items=DATA_NLL_ITEMS, sample=data_sample
) -> dict:
    """What data_nll keeps, from `sample(steps, items)` of the examples (benchmarks/data_nll_sample.py: others)."""
    rows = read_json_lines(training_data)
    if not rows:
        raise EvaluationError(f"{arm}: no training data in {training_data}")
    picked = sample([r.get("step", -1) for r in rows], items)
    data_examples, rows, weights = len(rows), [rows[i] for i, _ in picked], [w for _, w in picked]
    style = arm_style(config, arm)
    records = {r["id"]: r for r in dataset.records("train")}
    prompts = [chat(records[r["puzzle_id"]][f"prompt_{style}"], dataset.image(records[r["puzzle_id"]])) for r in rows]
    model, processor = base_model(config, base)
    scored = token_logprobs(model, processor, prompts, [r["completion"] for r in rows], common_prefix=True)
    parts = [s.split(answer_start(r["completion"], style)) for r, s in zip(rows, scored, strict=True)]
    reasoning = [(w, before) for w, (before, _) in zip(weights, parts, strict=True)]
    answer = [(w, after) for w, (_, after) in zip(weights, parts, strict=True)]
    return {
        "arm": arm,
        "prompt_style": style,
        "examples": len(rows),  # scored, of data_examples, each counted its weight in what follows
        "data_examples": data_examples,
        "tokens": sum(len(s.logprobs) for s in scored),
        "nll_per_token": weighted_per_token([(w, s.logprobs) for w, s in zip(weights, scored, strict=True)]),
        "nll_per_example": -weighted_mean(weights, [s.total for s in scored]),
        # the reasoning (everything before the answer's <answer> tag) and the answer, each per token (NaN: none)
        "reasoning_tokens_per_example": weighted_mean(weights, [len(lp) for _, lp in reasoning]),
        "nll_per_token_reasoning": weighted_per_token(reasoning),
        "answer_tokens_per_example": weighted_mean(weights, [len(lp) for _, lp in answer]),
        "nll_per_token_answer": weighted_per_token(answer),
        "greedy_share": weighted_mean(weights, [s.greedy for s in scored]),  # the base would have answered exactly this
        # per example: the step that drew it (none: SFT data) and its weight, what predictors.data_nll_at averages
        "per_example": [
            {"step": r.get("step", -1), "nll": -s.total, "tokens": len(s.logprobs), "weight": w}
            for r, s, w in zip(rows, scored, weights, strict=True)
        ],
    }
