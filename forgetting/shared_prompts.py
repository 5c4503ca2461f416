"""GRPO's log-probabilities with each distinct prompt run once: the same numbers, a fraction of the work.

GRPO scores num_generations completions of every prompt, so a batch holds each prompt (its text, padding and
image) that many times over, and the prompt is most of every sequence (the tiny jigsaw: some 70 prompt tokens,
8 to 16 completion tokens). A causal model's states over a prompt do not depend on what follows it, so

  1. the distinct prompts (all but their last token) run once, keeping their keys and values (the cache);
  2. the cache is repeated to every row that has that prompt (an index_select, through which autograd sums
     the rows' gradients back onto the one prompt);
  3. the rows' last prompt token and completions run on that cache, with the positions (Qwen2.5-VL's 3D rope)
     and attention mask the whole sequence would have had, and TRL's fused head scores the completion tokens.

Step 3's log-probabilities are those of one forward over whole sequences up to float rounding, and so are
their gradients; tests/test_shared_prompts.py checks both against TRL's own path. It is used for the policy's
and the reference model's log-probabilities (GRPOTrainer._get_per_token_logps_and_entropies) when every
sample has one image, some prompt repeats and the model keeps a cache (no gradient checkpointing); anything else
takes TRL's own path. Evaluation scores its sampled answers the same way (forgetting/inference.py:token_logprobs:
the KL's answers, several to each held-out puzzle prompt). GRPO's generation runs each distinct prompt once too
(shared_generate), and the processor prepares each distinct prompt, text and image, once (DistinctRows).
"""

import functools

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from forgetting.fast_paths import distinct_images


def distinct_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pixel_values, image_grid_thw):
    """(the first row of each distinct prompt, for every row the position of its prompt in that list): rows are
    the same prompt when their token ids, mask and image are."""
    _, image_of = distinct_images(pixel_values, image_grid_thw)
    rows = zip(prompt_ids.tolist(), prompt_mask.tolist(), image_of, strict=True)
    return first_of([(tuple(ids), tuple(mask), image) for ids, mask, image in rows])


def first_of(keys: list) -> tuple[list[int], list[int]]:
    """(the first row of each distinct key, for every row the position of its key's first row in that list)."""
    keep, index, seen = [], [], {}
    for row, key in enumerate(keys):
        if key not in seen:
            seen[key] = len(keep)
            keep.append(row)
        index.append(seen[key])
    return keep, index


def text_model(model):
    """The model under the language-model head (and under a LoRA wrapper): where Qwen2.5-VL computes rope positions
    and keeps the offsets of the batch it last ran over whole prompts, which generation from a cache reads."""
    return model.get_base_model().model if hasattr(model, "get_base_model") else model.model


def positions(model, input_ids, attention_mask, image_grid_thw, mm_token_type_ids) -> torch.Tensor:
    """The (3, batch, length) rope positions a forward over the whole sequences would use (Qwen2.5-VL's
    compute_3d_position_ids, or the plain count it falls back to)."""
    found = text_model(model).compute_3d_position_ids(
        input_ids=input_ids,
        image_grid_thw=image_grid_thw,
        video_grid_thw=None,
        inputs_embeds=None,
        attention_mask=attention_mask,
        cache=None,
        mm_token_type_ids=mm_token_type_ids,
    )
    if found is not None:
        return found
    count = torch.arange(input_ids.shape[1], device=input_ids.device)
    return count.view(1, 1, -1).expand(3, input_ids.shape[0], -1)


def rows_of(keep, input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids=None, end=None) -> dict:
    """The model inputs of rows keep (their first end columns; all when end is None), each with its own image."""
    patches = pixel_values.split(image_grid_thw.prod(-1).tolist())
    return {
        "input_ids": input_ids[keep, :end],
        "attention_mask": attention_mask[keep, :end],
        "pixel_values": torch.cat([patches[i] for i in keep]),
        "image_grid_thw": image_grid_thw[keep],
        **({"mm_token_type_ids": mm_token_type_ids[keep, :end]} if mm_token_type_ids is not None else {}),
    }


def cache_of(out):
    """A forward's cache: `cache` in transformers 5's outputs, `past_key_values` in its earlier releases."""
    cache = out.get("cache")
    return out.past_key_values if cache is None else cache


def shared_prompt_forward(
    model, unwrapped, input_ids, attention_mask, split: int, pixel_values, image_grid_thw, mm_token_type_ids=None,
    common: int = 0, **kwargs,
):  # fmt: skip
    """One forward over rows `[prompt | completion]` (completions from column split on; prompts left-padded, one
    image each) with each distinct prompt run once: steps 1 to 3 above. Returns the model's output over
    input_ids[:, split - 1:] (each row's last prompt token and its completion; kwargs go to that call), or None
    when no prompt repeats. model as it is called, unwrapped the model inside (for its rope positions). common:
    the length of a prefix every prompt shares, moved to the front of the rows (forgetting/common_prefix.py), which
    then runs once for all the distinct prompts."""
    keep, index = distinct_prompts(input_ids[:, :split], attention_mask[:, :split], pixel_values, image_grid_thw)
    if len(keep) == len(index):
        return None
    position_ids = positions(unwrapped, input_ids, attention_mask, image_grid_thw, mm_token_type_ids)
    prompts = rows_of(keep, input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids, split - 1)
    out = cached_forward(model, prompts, position_ids[:, keep, : split - 1], common, logits_to_keep=1)
    cache = cache_of(out)
    cache.reorder_cache(torch.tensor(index, device=input_ids.device))
    return model(
        input_ids=input_ids[:, split - 1 :],
        attention_mask=attention_mask,
        position_ids=position_ids[:, :, split - 1 :],
        cache=cache,
        **kwargs,
    )


def shared_prompt_logps(
    model, unwrapped, input_ids, attention_mask, logits_to_keep: int, pixel_values, image_grid_thw,
    mm_token_type_ids=None, compute_entropy: bool = False,
):  # fmt: skip
    """Per-token log-probabilities (and entropies) of the last logits_to_keep tokens of every row, as
    GRPOTrainer computes them, through shared_prompt_forward and TRL's fused head. None when no prompt repeats."""
    split = input_ids.shape[1] - logits_to_keep  # prompt | completion
    labels = input_ids[:, split - 1 :].masked_fill(attention_mask[:, split - 1 :] == 0, -100)
    labels[:, 0] = -100  # the prompt's last token is context, not scored
    out = shared_prompt_forward(
        model, unwrapped, input_ids, attention_mask, split, pixel_values, image_grid_thw, mm_token_type_ids,
        labels=labels, fused_lm_head=True,
    )  # fmt: skip
    if out is None:
        return None
    return out.log_probs[:, -logits_to_keep:], (out.entropy[:, -logits_to_keep:] if compute_entropy else None)


def one_image_each(model, inputs: dict) -> bool:
    """Whether every row of a batch holds exactly one image (and nothing else a prompt cache cannot carry)."""
    if inputs.get("pixel_values") is None or inputs.get("pixel_values_videos") is not None:
        return False
    starts = (inputs["input_ids"] == model.config.vision_start_token_id).sum(-1)
    return inputs["image_grid_thw"].shape[0] == len(starts) and bool((starts == 1).all())


def prompt_cache(model, inputs: dict, width: int = 0, common: int = 0) -> tuple[torch.Tensor | None, object]:
    """One forward over rows `[left-padded prompt | width continuation tokens]`: the logits predicting each
    continuation token (None when width is 0), and the cache cut back to each prompt but its last token (which
    generation runs itself), with the rope offsets generation reads set for these rows (text-only rows: positions
    counted past the left padding, as generate counts them, and no offsets). common: the length of the prefix the
    rows share, at their front (forgetting/common_prefix.py), run once."""
    text_only = inputs.get("pixel_values") is None
    if text_only:
        rows = inputs["input_ids"].shape[0]
        text_model(model).rope_deltas = torch.zeros(rows, 1, dtype=torch.long, device=inputs["input_ids"].device)
    if text_only or common:
        position_ids = row_positions(model, inputs)  # image rows: their rope offsets set on the way
        out = cached_forward(model, inputs, position_ids, common, logits_to_keep=width + 1)
    else:
        out = model(**inputs, use_cache=True, logits_to_keep=width + 1)
    cache = cache_of(out)
    cache.crop(-(width + 1))
    return (out.logits[:, :-1] if width else None), cache


def row_positions(model, inputs: dict) -> torch.Tensor:
    """The rope positions of a forward over left-padded (or common_prefix-ordered) rows: for rows with images (their
    image_grid_thw; the pixels may be in a cache already) Qwen2.5-VL's own (positions()), for text-only rows the
    count of the tokens the attention mask keeps, as generate counts them."""
    if inputs.get("image_grid_thw") is not None:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        return positions(model, ids, mask, inputs["image_grid_thw"], inputs.get("mm_token_type_ids"))
    count = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return count[None].expand(3, -1, -1)


def cached_forward(model, inputs: dict, position_ids: torch.Tensor, common: int = 0, **kwargs):
    """model(**inputs, position_ids=position_ids, use_cache=True, **kwargs); with common, over rows that begin
    with the same `common` tokens (forgetting/common_prefix.py): those run once, as a batch of one, and their keys
    and values are repeated to every row before the rest of the rows runs. The output covers the columns after
    the common prefix, its cache all of them."""
    if not common:
        return model(**inputs, position_ids=position_ids, use_cache=True, **kwargs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    head = model(
        input_ids=ids[:1, :common],
        attention_mask=mask[:1, :common],
        position_ids=position_ids[:, :1, :common],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = cache_of(head)
    cache.reorder_cache(torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device))
    rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    return model(
        input_ids=ids[:, common:],
        attention_mask=mask,
        position_ids=position_ids[:, :, common:],
        cache=cache,
        use_cache=True,
        **rest,
        **kwargs,
    )


def repeat_cache(model, cache, index: list[int]) -> None:
    """The cache (and the rope offsets) of distinct prompts, repeated to the rows: row r gets prompt index[r]'s."""
    cache.reorder_cache(torch.tensor(index, device=text_model(model).rope_deltas.device))
    text_model(model).rope_deltas = text_model(model).rope_deltas[index]


def shared_generate(model, generate, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, **kwargs):
    """generate (the model's own, bound) over rows that repeat prompts, as GRPO's groups do, with each distinct
    prompt (ids, mask and image) run once: its cache is repeated to its rows and generation goes on from there;
    the samples are drawn as from the repeated rows (one random draw per row and step either way)."""
    rows = {**kwargs, "input_ids": input_ids, "pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
    one_each = one_image_each(model, rows)
    keep, index = distinct_prompts(input_ids, attention_mask, pixel_values, image_grid_thw) if one_each else ([], [])
    if len(keep) == len(index):
        return generate(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            image_grid_thw=image_grid_thw, **kwargs,
        )  # fmt: skip
    forward = rows_of(keep, input_ids, attention_mask, pixel_values, image_grid_thw, kwargs.get("mm_token_type_ids"))
    _, cache = prompt_cache(model, forward)
    repeat_cache(model, cache, index)
    return generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)


def _key(value):
    """A hashable stand-in for a processor input, equal for equal inputs: an image by its mode, size and pixels."""
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_key(v) for v in value)
    if isinstance(value, Image.Image):
        return ("image", value.mode, value.size, value.tobytes())
    return value


def _images_in(value) -> int:
    if isinstance(value, dict):
        return sum(_images_in(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_images_in(v) for v in value)
    return int(isinstance(value, Image.Image))


class DistinctRows:
    """The processor, for one GRPO batch (whose rows repeat each prompt num_generations times): its batched calls
    over rows with one image each (TRL's prompt tokenisation, apply_chat_template, and its forward inputs, the
    processor's own call) prepare each distinct row once and repeat the results to the rows. The processor prepares
    every row on its own, and padding goes to the longest row, which is among the distinct ones, so the outputs
    are the processor's over all rows, bit for bit. Every other call and attribute is the processor's."""

    ROWS = ("input_ids", "attention_mask", "mm_token_type_ids")
    IMAGES = ("pixel_values", "image_grid_thw")

    def __init__(self, processor):
        self.processor = processor

    def __getattr__(self, name: str):
        return getattr(self.processor, name)

    def __call__(self, *args, images=None, text=None, **kwargs):
        batched = images is not None and isinstance(text, list) and not args and len(images) == len(text)
        if not batched or any(_images_in(row) != 1 for row in images):
            return self.processor(*args, images=images, text=text, **kwargs)
        keys = [(t, _key(row)) for t, row in zip(text, images, strict=True)]
        return self._once(
            keys, lambda rows: self.processor(images=[images[r] for r in rows], text=[text[r] for r in rows], **kwargs)
        )

    def apply_chat_template(self, conversation, *args, **kwargs):
        batched = isinstance(conversation, list) and conversation and isinstance(conversation[0], list)
        if args or not kwargs.get("tokenize") or not batched or any(_images_in(c) != 1 for c in conversation):
            return self.processor.apply_chat_template(conversation, *args, **kwargs)
        keys, template = [_key(c) for c in conversation], self.processor.apply_chat_template
        return self._once(keys, lambda rows: template([conversation[r] for r in rows], **kwargs))

    def _once(self, keys: list, call):
        """call(rows) on the first row of each distinct key, its outputs repeated to every row; on all rows when no
        key repeats or the outputs hold a field this does not know how to repeat."""
        keep, index = first_of(keys)
        if len(keep) == len(keys):
            return call(index)
        out = call(keep)
        if not set(self.IMAGES) <= set(out) <= set(self.ROWS + self.IMAGES):
            return call(list(range(len(keys))))
        patches = out["pixel_values"].split(out["image_grid_thw"].prod(-1).tolist())
        repeated = {"pixel_values": torch.cat([patches[i] for i in index])}
        for name, value in out.items():
            if name != "pixel_values":
                repeated[name] = value[index] if isinstance(value, torch.Tensor) else [value[i] for i in index]
        return BatchFeature(repeated)


def checkpointed(model) -> bool:
    """Whether the model recomputes its activations in the backward pass (gradient checkpointing): transformers
    then keeps no cache in training, and the prompts' keys and values cannot be shared."""
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


class SharedPrompts:
    """Mixed into GRPOTrainer (grpo_trainer()): its log-probabilities run each distinct prompt once
    (shared_prompt_logps) when every sample has one image, the call is not chunked and the model keeps a cache (no
    gradient checkpointing); TRL's own path otherwise."""

    OTHER_INPUTS = ("pixel_attention_mask", "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids")

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        chunk, images = kwargs.get("batch_size"), kwargs.get("num_images")
        usable = (
            not kwargs.get("compute_aux_loss")
            and all(kwargs.get(k) is None for k in self.OTHER_INPUTS)
            and kwargs.get("pixel_values") is not None
            and images is not None
            and set(images) == {1}
            and (chunk is None or chunk >= input_ids.shape[0])
            and not checkpointed(self.accelerator.unwrap_model(model))
        )
        if usable:
            with self.accelerator.autocast():
                found = shared_prompt_logps(
                    model,
                    self.accelerator.unwrap_model(model),
                    input_ids,
                    attention_mask,
                    logits_to_keep,
                    kwargs["pixel_values"],
                    kwargs["image_grid_thw"],
                    kwargs.get("mm_token_type_ids"),
                    kwargs.get("compute_entropy", False),
                )
            if found is not None:
                return (*found, None)
        return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs)

    def _generate_and_score_completions(self, inputs):
        """TRL's, with the processor preparing each distinct prompt of the batch once (DistinctRows)."""
        processor = self.processing_class
        self.processing_class = DistinctRows(processor)
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self.processing_class = processor

    def _generate_single_turn(self, *args, **kwargs):
        """TRL's generation (transformers' generate, not vLLM's), with each distinct prompt of the batch run once
        (shared_generate) unless the model recomputes its activations (no cache then)."""
        model = self.accelerator.unwrap_model(self.model)
        if self.use_vllm or getattr(self, "use_transformers_continuous_batching", False) or checkpointed(model):
            return super()._generate_single_turn(*args, **kwargs)
        model.generate = functools.partial(shared_generate, model, model.generate)
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            del model.generate  # the class's own again


@functools.cache
def grpo_trainer() -> type:
    """TRL's GRPOTrainer with SharedPrompts (built on first use: TRL's GRPO module imports MLflow, which the
    domain package does not)."""
    from trl import GRPOTrainer

    return type("SharedPromptGRPOTrainer", (SharedPrompts, GRPOTrainer), {})
