"""Pretrain a tiny Qwen2.5-VL on the tiny world's prior-knowledge tasks: the study's base model.

    python -m flows.pretrain_base --profile tiny        # writes assets/tiny-base (the shipped checkpoint)

A plain PyTorch loop: fresh items every step (drawn from the train side of each task's hash split), every
batch built by forgetting.models.batch through the processor, loss on answer tokens and <|im_end|> only.
"""

import hashlib
import itertools
import json
import math
import random
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import torch

from forgetting import world
from forgetting.config import ModelConfig, PretrainConfig, PuzzleConfig
from forgetting.evaluation import puzzle_scores
from forgetting.inference import generate
from forgetting.models import batch, chat, load_model
from forgetting.puzzle_data import generate_puzzles
from forgetting.puzzles import answer_text, well_formed_think
from forgetting.tiny_models import build_processor, build_tiny_model, train_tokenizer
from forgetting.vision_heads import VISION_TASKS, VisionAux, VisionHeads


def tokenizer_corpus(seed: int, per_task: int = 400, styles: tuple[str, ...] = ("direct",)) -> list[str]:
    """Prompts and answers of the train splits in the given styles (never a jigsaw): what the tokenizer is
    trained on."""
    items = [it for task in world.PRIOR_TASKS for it in world.make_split(task, "train", per_task, seed)]
    styled = [world.in_style(it, style) for style in styles for it in items]
    return [it.prompt for it in styled] + [it.completion for it in styled]


def learned_styles(config: PretrainConfig) -> tuple[str, ...]:
    """The prompt styles the base learns: direct, and think when think_share > 0."""
    return world.STYLES if config.think_share > 0 else ("direct",)


def build_base(size: str, config: PretrainConfig):
    """Tokenizer, processor and a randomly initialised model of the given size."""
    corpus = tokenizer_corpus(config.seed, styles=learned_styles(config))
    processor = build_processor(train_tokenizer(corpus, config.vocab_size, image_position=config.image_position))
    return build_tiny_model(size, processor, seed=config.seed), processor


def start_model(config: PretrainConfig):
    """The shipped base config.start_from in float32 on CPU, trainable, with its processor."""
    return load_model(ModelConfig(name_or_path=config.start_from, dtype="float32", device="cpu"))


THINK_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def add_think_tokens(model, processor) -> None:
    """The think style's tags as one token each (as real reasoning models have them), new rows of the tied
    embedding starting at the mean of the others. Measured: with each tag several byte-level tokens ('<', 'think',
    '>'), the base's jigsaw answers under the think prompt ran into tag fragments ('</thiwerwer>')."""
    tokenizer = processor.tokenizer
    new = [tag for tag in THINK_TAGS if tag not in tokenizer.get_vocab()]
    if not new:
        return
    tokenizer.add_tokens(new)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def lr_factor(step: int, config: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def optimizer_for(model, config: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW; the vision tower and its merger get their own learning rate (vision_lr_multiplier). Measured
    here: 2e-3 with 3x on the vision tower left the colour-of-a-shape task on a plateau (loss 0.8 after 300
    steps), 1e-3 with 1x learned it (loss 0.03); over the nine tasks, 6000 steps at 2e-3 with 3x reached a
    held-out mean of 0.446, at 7e-4 with 1x 0.665 (docs/tiny-world.md, "How it was built")."""
    vision = [p for n, p in model.named_parameters() if "visual" in n.split(".")[:3]]
    ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in ids]
    lr, vision_lr = config.learning_rate, config.learning_rate * config.vision_lr_multiplier
    groups = [{"params": rest, "lr": lr, "base_lr": lr}, {"params": vision, "lr": vision_lr, "base_lr": vision_lr}]
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.01)


class TaskDraws:
    """How often each prior-knowledge task is drawn into a batch. "equal": every task alike. "error": task t in
    proportion to draw_floor + its error rate over its last WINDOW training items, each scored (teacher-forced
    exact, free from the step's own forward pass) before the step that trains on it; a task not yet scored
    counts as all wrong, so draws start equal. Items come from the train split only (one may repeat an item
    trained on before), so the held-out split is never looked at. Why: with equal draws the tasks the base
    learns first (colour, colour code per cell, spatial: 1.00 by step ~5000) kept a third of the draws while
    count per cell was still climbing ~0.1 per 1000 steps when the budget ended (0.69 at step 10,000)."""

    WINDOW = 100

    def __init__(self, config: PretrainConfig):
        self.mode, self.floor = config.task_draws, config.draw_floor
        self.tasks = list(world.PRIOR_TASKS)
        self.recent = {t: deque(maxlen=self.WINDOW) for t in self.tasks}

    def record(self, items: list[world.Item], correct: list[bool]) -> None:
        for it, right in zip(items, correct, strict=True):
            self.recent[it.task].append(right)

    def accuracy(self, task: str) -> float:
        seen = self.recent[task]
        return sum(seen) / len(seen) if seen else 0.0

    def weights(self) -> list[float]:
        if self.mode == "equal":
            return [1.0] * len(self.tasks)
        return [self.floor + 1.0 - self.accuracy(t) for t in self.tasks]

    def shares(self) -> dict[str, float]:
        weights = self.weights()
        return {f"draws.{t}": w / sum(weights) for t, w in zip(self.tasks, weights, strict=True)}


def train_batches(config: PretrainConfig, draws: TaskDraws | None = None):
    """Endless lists of Items, tasks drawn by draws (default: equally). Measured (1500 steps of 16): equal draws
    reached held-out mean 0.39 where fixed weights favouring the slow tasks reached 0.30 in 1000 steps of 32
    (same time)."""
    draws = draws or TaskDraws(config)  # nothing recorded: error draws are equal draws too
    streams = {task: world.item_stream(task, "train", config.seed) for task in world.PRIOR_TASKS}
    rng = random.Random(config.seed)
    think = random.Random(f"{config.seed}-style")  # its own stream: think_share 0 draws the items it always did
    brief = random.Random(f"{config.seed}-brief")  # and brief_share 0 the styles
    while True:
        tasks = rng.choices(draws.tasks, weights=draws.weights(), k=config.batch_size)
        styles = [_style(think, config.think_share) for _ in tasks]
        yield [
            world.in_style(next(streams[t]), style, style == "think" and _drawn(brief, config.brief_share))
            for t, style in zip(tasks, styles, strict=True)
        ]


def _style(rng: random.Random, think_share: float) -> str:
    return "think" if _drawn(rng, think_share) else "direct"


def _drawn(rng: random.Random, share: float) -> bool:
    """True with probability share; draws nothing when share is 0 (so a new share leaves old streams as they were)."""
    return share > 0 and rng.random() < share


def item_batch(processor, items: list[world.Item], device: torch.device | str = "cpu") -> dict:
    """Prompt, image and answer of each item as one training batch through the processor (labels included)."""
    inputs = batch(processor, [chat(it.prompt, it.image, it.completion) for it in items], train=True)
    return {k: v.to(device) for k, v in inputs.items()}


@torch.no_grad()
def teacher_forced_correct(model, processor, items: list[world.Item], batch_size: int = 64) -> list[bool]:
    """Per item: is every answer token (and <|im_end|>) the argmax? This equals greedy-generate exact match
    when batches go through the processor (tests check it), at a tenth of the cost."""
    was_training = model.training
    model.eval()
    correct = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        inputs = item_batch(processor, chunk, model.device)
        labels = inputs.pop("labels")
        correct += exact_rows(model(**inputs).logits[:, :-1], labels[:, 1:]).tolist()
    model.train(was_training)
    return correct


def answered_correct(model, processor, items: list[world.Item], max_new_tokens: int = 64) -> list[bool]:
    """Per item, greedy generation graded as the benchmarks grade it: the answer (inside <answer> </answer> for a
    think item, which must also be well formed) right under the task's format."""
    conversations = [chat(it.prompt, it.image) for it in items]
    texts = generate(model, processor, conversations, max_new_tokens)
    right = []
    for it, text in zip(items, texts, strict=True):
        ok = it.style == "direct" or well_formed_think(text)
        right.append(ok and world.grade(answer_text(text), it.answer, world.ANSWER_FORMATS[it.task])[0])
    return right


def teacher_forced_exact(model, processor, items: list[world.Item], batch_size: int = 64) -> float:
    correct = teacher_forced_correct(model, processor, items, batch_size)
    return sum(correct) / len(correct)


def exact_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row: is every labelled token (target != -100) the argmax of its logits?"""
    return ((logits.argmax(-1) == target) | (target == -100)).all(dim=1)


def per_item_loss(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy averaged over each item's answer tokens, then over items; and per item, whether the answer
    is teacher-forced exact. The model's own loss averages over all answer tokens of the batch, so a list
    answer (8 tokens) weighs four times a one-word answer and the list tasks drown the rest."""
    labels = inputs.pop("labels")
    logits = model(**inputs).logits[:, :-1]
    target = labels[:, 1:]
    mask = target != -100
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
    return ((ce * mask).sum(1) / mask.sum(1)).mean(), exact_rows(logits.detach(), target)


def length_group(item: world.Item) -> tuple[bool, bool, str]:
    """Items of a group have prompts of about the same length: text-only, one-word answer, list answer; direct
    or think."""
    return item.image is None, world.answers_a_list(item), item.style


def backward_by_length(
    model, processor, items: list[world.Item], aux: "VisionAux | None" = None
) -> tuple[float, list[bool]]:
    """per_item_loss over items, its gradient accumulated one length group at a time: the same gradient as
    one padded batch, without padding a one-word question to the length of a list prompt (benchmarks/
    pretrain_step.py, 16 items, 2 cores: 0.35 s a step against 0.39 s padded). With aux, its loss on each
    group is added. Returns the language-model loss and, in the order of items, whether each was exact."""
    total, correct = 0.0, [False] * len(items)
    order = sorted(range(len(items)), key=lambda i: length_group(items[i]))
    for _, group in itertools.groupby(order, key=lambda i: length_group(items[i])):
        group = list(group)
        chunk = [items[i] for i in group]
        loss, exact = per_item_loss(model, item_batch(processor, chunk, model.device))
        loss = loss * len(group) / len(items)
        extra = aux.loss(chunk, len(items)) if aux is not None else None
        (loss if extra is None else loss + extra).backward()
        total += loss.item()
        for i, right in zip(group, exact.tolist(), strict=True):
            correct[i] = right
    return total, correct


def warm_up_vision(model, processor, config: PretrainConfig, log=lambda metrics, step: None) -> dict[str, float]:
    """Train the vision tower and merger alone for config.vision_warmup_steps, as real VLMs pretrain their
    image encoder before the language model reads it: each step draws batch_size items of the image-only
    tasks, equally often; the heads are dropped afterwards. Returns the heads' held-out exact accuracy per
    task. Measured (tiny, 2000 warm-up steps of 16 in 6-8 min, then 1500 steps of the usual pretraining with the
    tiny profile's settings, held-out mean over the nine tasks): 0.35 against 0.23 without the warm-up; colour
    1.0 against 0.55, colour code per cell 0.89 against 0.23, the other tasks within 0.05 of each other. The
    heads themselves reached colour 1.0, shape 0.53, count 0.82, digit 0.60, the list tasks 1.0, 0.88, 0.78."""
    heads = VisionHeads(model.model.visual, processor, config.seed).to(model.device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.learning_rate, weight_decay=0.01)
    streams = {t: world.item_stream(t, "train", config.seed + 1) for t in VISION_TASKS}
    rng = random.Random(config.seed + 1)
    schedule = config.model_copy(update={"steps": config.vision_warmup_steps})
    for step in range(config.vision_warmup_steps):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * lr_factor(step, schedule)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for task, n in Counter(rng.choices(VISION_TASKS, k=config.batch_size)).items():
            part = heads.loss(task, [next(streams[task]) for _ in range(n)]) * n / config.batch_size
            part.backward()
            loss += part.item()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0:
            log({"vision_warmup.loss": loss}, step)
    scores = {
        f"vision_warmup.{t}": heads.accuracy(t, world.make_split(t, "test", config.eval_items, config.seed))
        for t in VISION_TASKS
    }
    log(scores, 0)
    return scores


def held_out(config: PretrainConfig, styles: tuple[str, ...] | None = None) -> dict[str, list[world.Item]]:
    """Held-out items per task, in the given styles (default: every style the base learns): keys
    `heldout.<task>` (direct) and `heldout_think.<task>` (think)."""
    items = {task: world.make_split(task, "test", config.eval_items, config.seed) for task in world.PRIOR_TASKS}
    prefix = {"direct": "heldout", "think": "heldout_think"}
    return {
        f"{prefix[style]}.{task}": [world.in_style(it, style) for it in its]
        for style in styles or learned_styles(config)
        for task, its in items.items()
    }


def pretrain(
    size: str,
    config: PretrainConfig,
    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
    device: torch.device | str = "cpu",
) -> tuple[object, object, dict]:
    """Train a fresh tiny model, or continue the shipped base config.start_from (float32, on device); returns
    (model, processor, history of held-out accuracy per task)."""
    torch.manual_seed(config.seed)
    model, processor = start_model(config) if config.start_from else build_base(size, config)
    if config.think_share > 0:
        add_think_tokens(model, processor)
    model.to(device).train()
    history = {0: warm_up_vision(model, processor, config, log)} if config.vision_warmup_steps else {}
    optimizer = optimizer_for(model, config)
    aux = VisionAux(model, processor, config.seed, config.vision_aux_weight) if config.vision_aux_weight else None
    if aux is not None:
        lr = config.learning_rate * config.vision_lr_multiplier
        optimizer.add_param_group({"params": aux.parameters(), "lr": lr, "base_lr": lr})
    evaluation = held_out(config)
    draws = TaskDraws(config)
    started = time.perf_counter()
    for step, items in enumerate(itertools.islice(train_batches(config, draws), config.steps)):
        factor = lr_factor(step, config)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        optimizer.zero_grad(set_to_none=True)
        loss, correct = backward_by_length(model, processor, items, aux)
        draws.record(items, correct)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == config.steps - 1:
            log({"loss": loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm)}, step)
        if (step + 1) % config.eval_every == 0 or step == config.steps - 1:
            scores = {name: teacher_forced_exact(model, processor, its) for name, its in evaluation.items()}
            for prefix in {name.split(".")[0] for name in scores}:
                mine = [v for name, v in scores.items() if name.startswith(f"{prefix}.")]
                scores[f"{prefix}.mean"] = sum(mine) / len(mine)
            scores["elapsed_s"] = time.perf_counter() - started
            scores |= draws.shares()
            history[step + 1] = scores
            log(scores, step + 1)
    if aux is not None:
        aux.close()
    return model, processor, history


def jigsaw_probe(
    model,
    processor,
    n: int = 64,
    samples: int = 8,
    seed: int = 0,
    puzzles: PuzzleConfig | None = None,
    style: str = "direct",
    temperature: float = 1.0,
    max_new_tokens: int = 32,
) -> dict[str, float]:
    """How the base answers the jigsaw prompt it has never seen (n test puzzles of the given puzzle settings,
    default 2x2 synthetic ones, in the given prompt style): greedy exact accuracy, share of valid permutations
    (and of well-formed think answers), and pass@samples at temperature."""
    puzzles = (puzzles or PuzzleConfig()).model_copy(update={"n_train": 1, "n_test": n, "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_puzzles(puzzles, Path(tmp))
        scores = puzzle_scores(
            model,
            processor,
            dataset,
            style,
            samples=samples,
            seed=seed,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
    probe = {k.replace("puzzle.", "jigsaw."): v for k, v in scores.items()}
    probe["jigsaw.chance_exact"] = 1 / (math.factorial(puzzles.shape[0] * puzzles.shape[1]) - 1)  # not identity
    return probe


def save_base(model, processor, out: Path, card: dict) -> Path:
    """safetensors + processor + model_card.json, written beside each other."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    weights = out / "model.safetensors"
    card = {
        **card,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out
