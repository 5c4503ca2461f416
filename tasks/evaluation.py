"""Evaluation: greedy and sampled completions, and how well a model solves the puzzles.

(The lm-eval integration, forgetting deltas and the report build on this; see the README's stage table.)
"""

import torch

from tasks.models import batch, chat
from tasks.puzzles import PuzzleDataset, parse_answer, score_answer


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
    also pass@samples and the valid rate of samples at temperature 1."""
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
