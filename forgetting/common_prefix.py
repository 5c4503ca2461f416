"""Evaluation's prompts with the text they all begin with run once: the same numbers to float rounding, less work.

Every item of a benchmark asks its question in the same words and then shows its own image (the tiny jigsaw: some
80 tokens of instructions, then 18 of image and 5 of chat template), so a batch of its prompts is mostly one text
over and over. A causal model's states over that text do not depend on what follows it, so

  1. each row's common prefix moves to the front of the row, before its left padding:
     `[padding | prefix | rest]` becomes `[prefix | padding | rest]`. Every real token keeps its rope position
     (Qwen2.5-VL counts positions over the tokens the attention mask keeps) and attends to the same tokens
     (padding is masked wherever it sits), so the model computes the same states for it;
  2. the prefix runs once, as a batch of one, and its keys and values are repeated to every row;
  3. the rest of every row runs on that cache.

Generation goes on from the cache as from a left-padded prompt's (its positions count the mask's ones). The prefix
ends before a row's first image token, so its positions are plain counts in every row. The saving is the prefix's
share of the prompt tokens; tests/test_evaluation.py checks completions and log-probabilities against the plain
path. Steps 2 and 3 are forgetting/shared_prompts.py:cached_forward. Evaluation uses it (forgetting/inference.py:
generate_and_score and token_logprobs with common_prefix=True); training does not, so what an arm learns does not
change with it.
"""

import torch

MIN_PREFIX = 4  # shorter common prefixes run with the rest (not worth a forward of their own)


def prefix_length(inputs: dict, prompt_width: int) -> int:
    """How many tokens every row's prompt (its first prompt_width columns, left-padded) begins with, ending before
    any row's first image or video token and two tokens before its end at the latest (the last prompt token runs
    with the rest: generation runs it itself, and a prompt cache is cut back before it)."""
    ids, mask = inputs["input_ids"][:, :prompt_width], inputs["attention_mask"][:, :prompt_width]
    if ids.shape[0] < 2:
        return 0
    starts = mask.int().argmax(-1)  # each row's first real token: the left padding ends there
    longest = int((prompt_width - starts).min()) - 2
    if longest < MIN_PREFIX:
        return 0
    columns = starts[:, None] + torch.arange(longest, device=ids.device)
    aligned = ids.gather(1, columns)  # every row's prompt from its first real token
    same = (aligned == aligned[:1]).all(0)
    modality = inputs.get("mm_token_type_ids")
    if modality is not None:
        same &= (modality[:, :prompt_width].gather(1, columns) == 0).all(0)  # text tokens only
    length = int(same.int().cumprod(0).sum())
    return length if length >= MIN_PREFIX else 0


def prefix_first(inputs: dict, prefix: int) -> dict:
    """The inputs with each row's first `prefix` real tokens moved to the front of the row (step 1): every tensor
    with one column per token (input ids, attention mask, token types) is reordered, the image inputs are not."""
    if not prefix:
        return inputs
    mask = inputs["attention_mask"]
    rows, width = mask.shape
    starts = mask.int().argmax(-1)[:, None]
    column = torch.arange(width, device=mask.device)[None].expand(rows, -1)
    moved = torch.where(column < prefix + starts, column - prefix, column)  # the padding, then the rest in place
    order = torch.where(column < prefix, starts + column, moved)
    return {key: value.gather(1, order) if per_token(key, value, width) else value for key, value in inputs.items()}


def per_token(key: str, value, width: int) -> bool:
    """Whether a model input holds one column per token of rows `width` wide (input ids, attention mask, token
    types), as the image inputs do not."""
    return (
        isinstance(value, torch.Tensor)
        and key not in ("pixel_values", "image_grid_thw")
        and value.dim() == 2
        and value.shape[1] == width
    )
