"""The model calls every stage shares: batched generation and the log-probability of given continuations,
both through forgetting/models.py:batch, the processor path training and TRL use. Each runs a prompt as few times
as it can, with the numbers of one forward per row to float rounding: a generation's prompt also scores a given
answer (generate_and_score), several answers or samples of one prompt share its run (continuation_logits,
shared_rows).
"""

import copy
from dataclasses import dataclass

import torch

from forgetting import fast_paths
from forgetting.common_prefix import per_token, prefix_first, prefix_length
from forgetting.models import batch
from forgetting.shared_prompts import (
    cached_forward,
    first_of,
    one_image_each,
    prompt_cache,
    repeat_cache,
    row_positions,
    shared_prompt_forward,
    text_model,
)


def sampling(temperature: float, top_p: float = 1.0, top_k: int = 0) -> dict:
    """generate's keywords for sampling at temperature, as TRL's GRPO samples its rollouts: no top-k or top-p cut
    unless asked (transformers fills an unset top_k with 50; forgetting/models.py:neutral_generation keeps a
    checkpoint's own settings out)."""
    return {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}


@dataclass(frozen=True)
class Scored:
    """One continuation scored token by token: each token's log-probability and the character offset in the
    continuation where it starts; greedy: whether greedy decoding would produce every token."""

    logprobs: list[float]
    starts: list[int]
    greedy: bool

    @property
    def total(self) -> float:
        """The continuation's log-probability: the sum over its tokens."""
        return sum(self.logprobs)

    def split(self, at: int) -> tuple[list[float], list[float]]:
        """The log-probabilities of the tokens that start before character `at`, and of the rest."""
        before = [lp for lp, start in zip(self.logprobs, self.starts, strict=True) if start < at]
        return before, self.logprobs[len(before) :]


class Continuations:
    """Continuation texts tokenized for a batch of left-padded prompts: appended to the prompt rows (right-padded),
    and their tokens' log-probabilities read from the logits that predict them."""

    def __init__(self, tokenizer, texts: list[str]):
        encoded = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
        self.ids = [e["input_ids"] for e in encoded]
        self.starts = [[start for start, _ in e["offset_mapping"]] for e in encoded]
        self.width = max((len(x) for x in self.ids), default=0)
        pad = tokenizer.pad_token_id or 0
        self.tokens = torch.tensor([x + [pad] * (self.width - len(x)) for x in self.ids], dtype=torch.long)
        self.mask = torch.tensor([[1] * len(x) + [0] * (self.width - len(x)) for x in self.ids], dtype=torch.long)
        self.split = 0

    def appended(self, inputs: dict) -> dict:
        """The model inputs with every per-token tensor right-padded by the continuations."""
        self.split = prompt_len = inputs["input_ids"].shape[1]
        tokens, mask = self.tokens.to(inputs["input_ids"].device), self.mask.to(inputs["input_ids"].device)
        out = dict(inputs)
        for key, value in inputs.items():
            if key == "input_ids":
                out[key] = torch.cat([value, tokens], dim=1)
            elif key == "attention_mask":
                out[key] = torch.cat([value, mask], dim=1)
            elif per_token(key, value, prompt_len):
                out[key] = torch.cat([value, torch.zeros_like(tokens, dtype=value.dtype)], dim=1)
        return out

    def scored(self, logits: torch.Tensor) -> list[Scored]:
        """Each continuation's Scored from the logits predicting its tokens (batch, width, vocabulary)."""
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        target = self.tokens.to(logp.device)
        token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        greedy = logits.argmax(-1) == target
        mask = self.mask.to(logp.device).bool()
        return [
            Scored(token_logp[row][mask[row]].tolist(), self.starts[row], bool(greedy[row][mask[row]].all()))
            for row in range(len(self.ids))
        ]


@torch.no_grad()
def generate(
    model, processor, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 64,
    common_prefix: bool = False, **sampling,
) -> list[str]:  # fmt: skip
    """Completions (text after the prompt, special tokens dropped) for prompt-only conversations, in batches
    (common_prefix as for generate_and_score)."""
    return generate_and_score(
        model, processor, conversations, None, max_new_tokens, batch_size, common_prefix, **sampling
    )[0]


@torch.no_grad()
def generate_and_score(
    model,
    processor,
    conversations: list[list[dict]],
    continuations: list[str | None] | None,
    max_new_tokens: int,
    batch_size: int = 64,
    common_prefix: bool = False,
    **sampling,
) -> tuple[list[str], list[Scored | None]]:
    """generate's completions, and for each conversation given a continuation its Scored (None where none is
    given), with each batch's prompts run once for both: one forward over `[prompt | continuation]` scores the
    continuations (as token_logprobs does) and generation goes on from that forward's cache, cut back to the
    prompt (a causal model's states over the prompt do not depend on what follows it). The evaluation scores the
    held-out answers of the benchmarks it generates for this way. A batch without continuations that passes one
    conversation object several times (several samples of one prompt) runs that prompt once and generates every
    sample from its cache (off with FORGETTING_FAST_PATHS=0); the samples are drawn as from the repeated prompts.
    common_prefix: the text every prompt of a batch begins with runs once (forgetting/common_prefix.py)."""
    was_training = model.training
    model.eval()
    texts, scored = [], []
    continuations = continuations or [None] * len(conversations)
    for i in range(0, len(conversations), batch_size):
        chunk, wanted = conversations[i : i + batch_size], continuations[i : i + batch_size]
        keep, index = shared_rows(chunk, wanted)
        inputs, common = prompt_inputs(model, processor, [chunk[k] for k in keep], common_prefix)
        rows = Continuations(processor.tokenizer, [c or "" for c in wanted])
        if rows.width or len(keep) < len(chunk) or common:
            logits, cache = prompt_cache(model, rows.appended(inputs) if rows.width else inputs, rows.width, common)
            if len(keep) < len(chunk):  # every sample from its prompt's one run
                repeat_cache(model, cache, index)
            prompt = {k: v[index] for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
            generated = model.generate(**prompt, cache=cache, max_new_tokens=max_new_tokens, **sampling)
        else:
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        found = rows.scored(logits) if rows.width else [Scored([], [], True)] * len(wanted)
        scored += [s if c is not None else None for s, c in zip(found, wanted, strict=True)]
        texts += processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return texts, scored


def prompt_inputs(model, processor, conversations: list[list[dict]], common_prefix: bool) -> tuple[dict, int]:
    """The model inputs of a batch of prompts (left-padded, on the model's device) and, with common_prefix, the
    length of the text they all begin with, moved to the front of every row (forgetting/common_prefix.py; 0 and
    the inputs as they are without)."""
    inputs = {k: v.to(model.device) for k, v in batch(processor, conversations, train=False).items()}
    common = prefix_length(inputs, inputs["input_ids"].shape[1]) if common_prefix and fast_paths.enabled() else 0
    return prefix_first(inputs, common), common


def shared_rows(conversations: list[list[dict]], continuations: list[str | None]) -> tuple[list[int], list[int]]:
    """(the first row of each distinct conversation object, for every row the position of its own in that list):
    rows share a prompt run when they pass the same object and no row has a continuation to score."""
    if any(c is not None for c in continuations) or not fast_paths.enabled():
        return list(range(len(conversations))), list(range(len(conversations)))
    return first_of([id(conversation) for conversation in conversations])


def continuation_logprobs(
    model, processor, prompts: list[list[dict]], continuations: list[str], batch_size: int = 64,
    common_prefix: bool = False,
) -> list[tuple[float, int, bool]]:  # fmt: skip
    """For each (prompt conversation, continuation text): the summed log-probability of the continuation's
    tokens right after the opened assistant turn (what `generate` would continue from), their count, and
    whether greedy decoding would produce them. Chat-template tokens (<|im_end|>) are not counted."""
    scored = token_logprobs(model, processor, prompts, continuations, batch_size, common_prefix)
    return [(s.total, len(s.logprobs), s.greedy) for s in scored]


def continuation_logits(model, inputs: dict, split: int, common: int = 0) -> torch.Tensor:
    """The logits that predict each token from column split on, for rows `[left-padded prompt | continuation]`:
    of one forward over the whole rows, or, when prompts with one image each repeat (several answers to one
    prompt: the KL's samples), with each distinct prompt run once (forgetting/shared_prompts.py; the same numbers
    to float rounding; FORGETTING_FAST_PATHS=0 turns it off). common: the length of the prefix every row begins
    with, at the rows' front (prompt_inputs), run once."""
    if fast_paths.enabled() and one_image_each(model, inputs):
        out = shared_prompt_forward(
            model, model, inputs["input_ids"], inputs["attention_mask"], split, inputs["pixel_values"],
            inputs["image_grid_thw"], inputs.get("mm_token_type_ids"), common,
        )  # fmt: skip
        if out is not None:
            return out.logits[:, :-1]
    width = inputs["input_ids"].shape[1] - split  # the head runs on the continuation's positions alone
    if common:
        out = cached_forward(model, inputs, row_positions(model, inputs), common, logits_to_keep=width + 1)
        return out.logits[:, :-1]
    return model(**inputs, logits_to_keep=width + 1).logits[:, :-1]


@torch.no_grad()
def token_logprobs(
    model, processor, prompts: list[list[dict]], continuations: list[str], batch_size: int = 64,
    common_prefix: bool = False,
) -> list[Scored]:  # fmt: skip
    """continuation_logprobs token by token (see Scored); common_prefix as for generate_and_score."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = Continuations(processor.tokenizer, continuations[i : i + batch_size])
        if rows.width == 0:
            out += [Scored([], [], True)] * len(rows.ids)
            continue
        inputs, common = prompt_inputs(model, processor, prompts[i : i + batch_size], common_prefix)
        out += rows.scored(continuation_logits(model, rows.appended(inputs), rows.split, common))
    model.train(was_training)
    return out


class PromptRun:
    """A batch of distinct prompts run once, for sampling answers to them and scoring given answers: the prompts'
    states (all but each prompt's last token, common prefix once: prompt_cache) serve both, where generate and
    token_logprobs would each run the prompts again. sample() draws what generate draws over the prompts each
    repeated n times, seed for seed; score() gives token_logprobs' numbers to float rounding. The KL estimates
    sample the held-out puzzle prompts and score two lists of answers on one run of them, and the base's runs are
    kept for every model evaluated after it. With the faster paths off (FORGETTING_FAST_PATHS=0) nothing is kept:
    sample and score are generate and token_logprobs over the conversations."""

    def __init__(self, model, processor, conversations: list[list[dict]]):
        self.conversations = conversations
        self.cache = None
        if fast_paths.enabled():
            with torch.no_grad():
                inputs, common = prompt_inputs(model, processor, conversations, common_prefix=True)
                _, self.cache = prompt_cache(model, inputs, 0, common)
            self.inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}  # the images are in the states
            self.rope_deltas = text_model(model).rope_deltas

    @property
    def nbytes(self) -> int:
        """The kept states' size in bytes (the storage their keys and values are views of)."""
        if self.cache is None:
            return 0
        return sum(t.untyped_storage().nbytes() for layer in self.cache.layers for t in (layer.keys, layer.values))

    def _rows(self, model, index: list[int]):
        """The states repeated to rows (row r gets prompt index[r]'s), as a cache of their own, and those rows' text
        inputs. Repeating selects into new tensors, so the cache copies only its layers' references; the kept
        states stay as they are."""
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        text_model(model).rope_deltas = self.rope_deltas
        repeat_cache(model, cache, index)
        rows = {k: v[index] for k, v in self.inputs.items() if k not in ("pixel_values", "image_grid_thw")}
        return cache, rows

    @torch.no_grad()
    def sample(self, model, processor, n: int, max_new_tokens: int, **sampling) -> list[str]:
        """n answers to every prompt, prompt-major (a prompt's n side by side)."""
        if self.cache is None:
            repeated = [c for c in self.conversations for _ in range(n)]
            return generate(model, processor, repeated, max_new_tokens, len(repeated), True, **sampling)
        was_training = model.training
        model.eval()
        cache, rows = self._rows(model, [i for i in range(len(self.conversations)) for _ in range(n)])
        generated = model.generate(**rows, cache=cache, max_new_tokens=max_new_tokens, **sampling)
        model.train(was_training)
        return processor.batch_decode(generated[:, rows["input_ids"].shape[1] :], skip_special_tokens=True)

    @torch.no_grad()
    def score(self, model, processor, answers: list[list[str]]) -> list[Scored]:
        """Every answer scored, answers[i] those to prompt i, in that order."""
        flat = [a for given in answers for a in given]
        if self.cache is None:
            prompts = [c for c, given in zip(self.conversations, answers, strict=True) for _ in given]
            return token_logprobs(model, processor, prompts, flat, len(flat), True)
        continuations = Continuations(processor.tokenizer, flat)
        if continuations.width == 0:
            return [Scored([], [], True)] * len(flat)
        was_training = model.training
        model.eval()
        index = [i for i, given in enumerate(answers) for _ in given]
        cache, rows = self._rows(model, index)
        rows = continuations.appended(rows)
        split = continuations.split
        grid = self.inputs.get("image_grid_thw")
        position_ids = row_positions(model, rows | {"image_grid_thw": None if grid is None else grid[index]})
        out = model(
            input_ids=rows["input_ids"][:, split - 1 :],
            attention_mask=rows["attention_mask"],
            position_ids=position_ids[:, :, split - 1 :],
            cache=cache,
        )
        model.train(was_training)
        return continuations.scored(out.logits[:, :-1])
