"""Shortcuts that compute the same thing faster, installed for the whole process (models.load_model calls
install(); every instance of the classes uses them, GRPO's reference model included).

Two change the order of floating-point sums, so results agree to float rounding (benchmarks/step_flops.py
--compare measures the time, tests/test_fast_paths.py the agreement):

- The patch embedding as one matrix product. The model cuts images into patches before the tower and embeds
  each with a Conv3d whose kernel equals its stride, which is a product of the flattened patches with the
  flattened kernel; oneDNN's conv3d ran several times slower than that product on CPU.
- Each distinct image through the vision tower once per forward. GRPO repeats a prompt, image included,
  num_generations times in one batch (generation, the policy's and the reference model's forward); the tower
  sees every image on its own (attention within an image), so encoding one copy and repeating its features
  gives every copy the same features, and autograd sums the copies' gradients into the one encoding.

The others compute the same numbers bit for bit:

- Attention within each image (or window) of the vision tower in one batched call per length. transformers'
  tower calls sdpa attention once per image or window (only flash-attention takes the whole list at once): some
  thousand calls per evaluation of the tiny model, and at the paper's 504 px 25 windows an image in each of
  28 windowed blocks, 200 calls a block for a batch of 8, each a few kernel launches on a GPU. Here the images or
  windows of each length go through attention as one batch (one call for the tiny model's images, three for the
  windows of 504 px images).
- Qwen2.5-VL's rope positions (get_rope_index) in tensor operations over the whole batch: transformers loops in
  Python over the rows and over each row's runs of text and image tokens, 15 ms for a GRPO batch of 64 rows (and
  again for the reference model's forward), 1 ms here; the same integers.
- The key-value cache grown in place. transformers' DynamicLayer appends each new token's keys and values by
  concatenation, which copies the whole cache at every token of every layer; without gradients (generation, the
  reference model, evaluation) a layer here writes them into spare room it keeps past its end and hands attention
  views of the filled part: one copy per growth instead of one per token.
- RMS normalisation (every decoder layer's two, the vision blocks' two, the merger's and the final one) through
  torch's rms_norm on CPU in float32: one kernel instead of transformers' five (square, mean, add, rsqrt, two
  products), forward and backward; the same numbers bit for bit there (tests/test_fast_paths.py). Elsewhere
  (bf16, GPU) transformers' own, which rounds between its steps.
- The assistant mask (TRL's collator asks the processor for it in SFT's batches) from the tokens' character
  offsets in one comparison per answer span. transformers walks every token's offsets as tensor elements in
  Python: a tiny SFT batch of 16 took 36-40 ms to collate, now 17-18.
- Two in TRL's fused LM head, which computes per-token log-probabilities for SFT's loss and GRPO's without the
  whole logits tensor (trl/kernels/chunked_logprob.py; the torch code it runs where there is no Triton, i.e. on
  CPU), once TRL's trainers are imported (a process that only evaluates never imports them). Tiles as wide as
  the vocabulary when it is narrower than TRL's 32,768 columns: the same single tile, in a buffer of its own
  width instead of one 64 times wider (the tiny model has 509 tokens). And the backward's gradient of the logits
  on the rows that carry a gradient only: on CPU the fused head scores every position (prompt and padding
  included) and zeroes the ones without a label afterwards, so most rows of an SFT batch get a zero gradient,
  which TRL computes as zero times their logits' gradient over the whole vocabulary; here they get the zero
  directly. The products into the gradients of the hidden states and the head's weight stay over all rows, so
  their sums run in the same order (unless a logit of a row without a gradient is not finite, which TRL would
  spread as NaN).

Set FORGETTING_FAST_PATHS=0 to run transformers' and TRL's own code.
"""

import bisect
import functools
import os
import sys

import torch
import torch.nn.functional as F

_ORIGINAL: dict[str, object] = {}


def _patch_embed(self, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight  # (embed, channels, time, patch, patch), no bias
    flat = weight.reshape(weight.shape[0], -1)
    return F.linear(hidden_states.to(weight.dtype).reshape(-1, flat.shape[1]), flat)


def distinct_images(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """(the first of each distinct image, for every image the position of its distinct one in that list).
    Images are the consecutive runs of grid_thw.prod(-1) patches in pixel_values; two are the same when their
    grids and patches are equal (a sum picks the candidates, torch.equal decides)."""
    sizes = grid_thw.prod(-1)
    owner = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)
    sums = torch.zeros(len(sizes), dtype=pixel_values.dtype, device=pixel_values.device)
    sums = sums.index_add(0, owner, pixel_values.sum(-1)).tolist()  # equal images, equal sums
    chunks = pixel_values.split(sizes.tolist())
    keys = [(tuple(g), s) for g, s in zip(grid_thw.tolist(), sums, strict=True)]
    keep: list[int] = []
    index: list[int] = []
    seen: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        match = next((j for j in seen.get(key, []) if torch.equal(chunks[keep[j]], chunks[i])), None)
        if match is None:
            match = len(keep)
            seen.setdefault(key, []).append(match)
            keep.append(i)
        index.append(match)
    return keep, index


def _image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs):
    original = _ORIGINAL["get_image_features"]
    if image_grid_thw is None or len(image_grid_thw) < 2:
        return original(self, pixel_values, image_grid_thw, **kwargs)
    keep, index = distinct_images(pixel_values, image_grid_thw)
    if len(keep) == len(index):
        return original(self, pixel_values, image_grid_thw, **kwargs)
    patches = pixel_values.split(image_grid_thw.prod(-1).tolist())
    out = original(self, torch.cat([patches[i] for i in keep]), image_grid_thw[keep], **kwargs)
    out.pooler_output = tuple(out.pooler_output[j] for j in index)  # what the model reads: one per image
    out.last_hidden_state = None  # the tower's unmerged states, in its window order over the distinct images only
    return out


def _rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if hidden_states.device.type != "cpu" or hidden_states.dtype != torch.float32 or weight.dtype != torch.float32:
        return _ORIGINAL["rms_norm"](self, hidden_states)
    return torch.rms_norm(hidden_states, weight.shape, weight, self.variance_epsilon)


def _vision_attention(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen2_5_VLVisionAttention.forward with the images (or windows: cu_seqlens) of each length as the batch of one
    attention call, when attention is sdpa and some share a length; otherwise transformers' own, which calls
    attention once per image or window. Windows come in a few lengths (at 504 px an image's 25 windows in three), so
    a block over a batch of images makes a few calls instead of one per window: the rows go to an order where the
    windows of each length follow one another, and back after attention (a permutation: no sum changes)."""
    lengths = cu_seqlens.diff().tolist()
    groups = _by_length(lengths)
    if self.config._attn_implementation != "sdpa" or len(groups) == len(lengths):
        return _ORIGINAL["vision_attention"](self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    rows = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(rows, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    query, key = apply_rotary_pos_emb_vision(query, key, *position_embeddings)
    order = None if len(groups) == 1 else _grouped_rows(cu_seqlens, groups)
    if order is not None:
        query, key, value = (t[order] for t in (query, key, value))
    outs, start = [], 0
    for length, windows in groups:
        count = len(windows)
        end = start + length * count
        q, k, v = (t[start:end].reshape(count, length, self.num_heads, -1).transpose(1, 2) for t in (query, key, value))
        out, _ = sdpa_attention_forward(
            self, q, k, v, attention_mask=None, scaling=self.scaling,
            dropout=self.attention_dropout if self.training else 0.0, is_causal=False, **kwargs,
        )  # fmt: skip
        outs.append(out.reshape(end - start, -1))
        start = end
    out = outs[0] if order is None else torch.cat(outs)[torch.argsort(order)]
    return self.proj(out.contiguous())


def _by_length(lengths: list[int]) -> list[tuple[int, list[int]]]:
    """(length, the windows of that length in their order) for each length, in the order lengths first occur."""
    groups: dict[int, list[int]] = {}
    for window, length in enumerate(lengths):
        groups.setdefault(length, []).append(window)
    return list(groups.items())


def _grouped_rows(cu_seqlens: torch.Tensor, groups: list[tuple[int, list[int]]]) -> torch.Tensor:
    """The rows of the windows of groups, group after group (each window's rows in their order)."""
    starts = cu_seqlens[:-1]
    return torch.cat(
        [(starts[windows, None] + torch.arange(length, device=starts.device)).reshape(-1) for length, windows in groups]
    )


def _rope_index(
    self, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None, second_per_grid_ts=None,
    attention_mask=None, **kwargs,
):  # fmt: skip
    """Qwen2_5_VLModel.get_rope_index in tensor operations over the whole batch instead of a Python loop over rows
    and over each row's runs of text and image tokens: the same integers. Rows of text and images (no video);
    anything else, or a batch transformers would reject (more image runs than grids, a run that is not its
    grid's size, a row with no tokens), goes to transformers' own."""
    fallback = functools.partial(
        _ORIGINAL["rope_index"], self, input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw,
        second_per_grid_ts, attention_mask, **kwargs,
    )  # fmt: skip
    if video_grid_thw is not None or image_grid_thw is None or mm_token_type_ids is None:
        return fallback()
    rows, length = input_ids.shape
    device = input_ids.device
    kept = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    types = mm_token_type_ids.to(device=device, dtype=torch.long)
    if not kept.any(1).all() or ((types != 0) & (types != 1) & kept).any():
        return fallback()
    column = torch.arange(length, device=device).expand(rows, length)
    before = torch.where(kept, column, -1).cummax(1).values  # the last kept token at or before each column
    before = torch.cat([before.new_full((rows, 1), -1), before[:, :-1]], 1)  # ... strictly before it
    type_before = torch.where(before >= 0, types.gather(1, before.clamp(min=0)), -1)
    image = kept & (types == 1)
    starts = image & (type_before != 1)  # a run of image tokens among the kept ones takes the next grid
    runs = int(starts.sum())
    grids = image_grid_thw[:runs].to(device=device, dtype=torch.long)
    merge = self.config.vision_config.spatial_merge_size
    height, width = grids[:, 1] // merge, grids[:, 2] // merge
    rank = image.flatten().cumsum(0).view(rows, length) - 1  # image tokens, row after row
    run = starts.flatten().cumsum(0).view(rows, length) - 1
    first = rank[starts]  # each run's first token's rank
    if runs > len(image_grid_thw) or not torch.equal(
        torch.bincount(run[image], minlength=runs), grids[:, 0] * height * width
    ):
        return fallback()
    step = (kept & (types == 0)).long()  # a text token advances one; an image run max(height, width) after it
    step[starts] += torch.maximum(grids[:, 1], grids[:, 2]) // merge
    at = step.cumsum(1) - step  # the position count before each token
    out = at.unsqueeze(0).repeat(3, 1, 1)
    r = run[image]  # each image token's run
    k = rank[image] - first[r]  # ... and its place in it
    area = height[r] * width[r]
    start = at[starts][r]
    out[:, image] = torch.stack([start + k // area, start + k % area // width[r], start + k % width[r]])
    out = out.masked_fill(~kept, 0).to(input_ids.dtype)
    deltas = out.amax((0, 2)) + 1 - kept.sum(1)
    return out, deltas.unsqueeze(1)


def _grow_in_place(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
    """DynamicLayer.update without a copy of the whole cache per token: the new keys and values are written into
    room kept past the layer's end (allocated, with the layer's states copied in, when they do not fit or the
    layer's states were replaced: reordered, or a fresh layer), and keys and values become views of the filled
    part. With gradients, transformers' own update: autograd keeps the views it attended over, which a later write
    would change under it."""
    if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad):
        return _ORIGINAL["cache_update"](self, key_states, value_states, *args, **kwargs)
    if not self.is_initialized:
        self.lazy_initialization(key_states, value_states)
    filled = self.keys.shape[-2] if self.keys.numel() else 0
    grown = filled + key_states.shape[-2]
    room = getattr(self, "_room", None)
    fits = (
        room is not None
        and filled > 0
        and self.keys.data_ptr() == room[0].data_ptr()
        and self.values.data_ptr() == room[1].data_ptr()
        and self.keys.shape[:-2] == key_states.shape[:-2] == room[0].shape[:-2]
        and grown <= room[0].shape[-2]
    )
    if not fits:
        shape = (*key_states.shape[:-2], max(2 * grown, grown + 64), key_states.shape[-1])
        room = (key_states.new_empty(shape), value_states.new_empty(shape))
        if filled:
            room[0][..., :filled, :] = self.keys
            room[1][..., :filled, :] = self.values
        self._room = room
    room[0][..., filled:grown, :] = key_states
    room[1][..., filled:grown, :] = value_states
    self.keys, self.values = room[0][..., :grown, :], room[1][..., :grown, :]
    return self.keys, self.values


def _assistant_masks(self, processed: dict, generation_indices: list[list[tuple[int, int]]]) -> dict:
    """ProcessorMixin._adjust_assistant_masks_indices with tensor comparisons: a token is the assistant's when its
    character span overlaps one of the assistant's spans in the rendered text, each span first shifted past the
    placeholders (image pads) expanded before it. Zero-width tokens (padding, added specials) match nothing."""
    offsets = processed.pop("offset_mapping")
    input_ids = processed["input_ids"]
    replaced = processed.pop("text_replacement_offsets", None)
    if replaced is None or len(replaced) == 0:
        replaced = [[]] * len(input_ids)
    masks = []
    for row in range(len(input_ids)):
        ends = [r["span"][1] for r in replaced[row]]
        gained = [0] + [r["new_span"][1] - r["span"][1] for r in replaced[row]]
        spans = torch.as_tensor(offsets[row], dtype=torch.long).reshape(-1, 2)
        mask = torch.zeros(len(input_ids[row]), dtype=torch.bool)
        for span in generation_indices[row]:
            start, end = (char + gained[bisect.bisect_right(ends, char)] for char in span)
            mask[: len(spans)] |= (spans[:, 0] < end) & (spans[:, 1] > start)
        masks.append(mask.int().tolist())
    processed["assistant_masks"] = masks
    return processed


class _VocabularyWideTiles:
    """TRL's ChunkedLogProbFunction (what trl.trainer.utils calls `.apply` on) with its vocabulary tiles no wider than
    the vocabulary."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, *args):
        width = min(chunk_size, weight.shape[0]) or chunk_size  # a partitioned weight (ZeRO-3) reports no rows
        return _ORIGINAL["chunked_logprob"].apply(hidden, weight, bias, targets, temperature, width, *args)


def _backward_rows(tile, tile_stride, targets, log_z, entropy, grad_logprobs, grad_entropy, *args, **flags):
    """trl.kernels.chunked_logprob._backward_tile, which turns a tile of logits into their gradient in place, run on
    the rows with a nonzero gradient of their log-probability or entropy only; the other rows become zero."""
    original = _ORIGINAL["chunked_backward"]
    live = torch.zeros(len(targets), dtype=torch.bool, device=targets.device)
    if flags["HAS_LOGPROB_GRAD"]:
        live |= grad_logprobs != 0
    if flags["HAS_ENTROPY_GRAD"]:
        live |= grad_entropy != 0
    rows = live.nonzero()[:, 0]
    if 2 * len(rows) > len(targets):  # mostly live: the gather and scatter would cost more than they save
        return original(tile, tile_stride, targets, log_z, entropy, grad_logprobs, grad_entropy, *args, **flags)
    if flags["HAS_LOGPROB_GRAD"]:
        grad_logprobs = grad_logprobs[rows]
    if flags["HAS_ENTROPY_GRAD"]:
        grad_entropy = grad_entropy[rows]
    part = tile[rows]
    original(
        part, part.stride(0), targets[rows], log_z[rows], entropy[rows], grad_logprobs, grad_entropy, *args, **flags
    )
    tile.zero_()
    tile.index_copy_(0, rows, part)


def enabled() -> bool:
    """Whether the project's faster paths are on: this module's and GRPO's shared prompts
    (forgetting/shared_prompts.py). FORGETTING_FAST_PATHS=0 turns them off (to compare, or to rule them out)."""
    return os.environ.get("FORGETTING_FAST_PATHS", "1") != "0"


def _patches() -> tuple:
    """(name in _ORIGINAL, class or module, attribute, replacement) of every shortcut."""
    from transformers.cache_utils import DynamicLayer
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.processing_utils import ProcessorMixin

    patches = (
        ("patch_embed", qwen.Qwen2_5_VisionPatchEmbed, "forward", _patch_embed),
        ("get_image_features", qwen.Qwen2_5_VLModel, "get_image_features", _image_features),
        ("vision_attention", qwen.Qwen2_5_VLVisionAttention, "forward", _vision_attention),
        ("rope_index", qwen.Qwen2_5_VLModel, "get_rope_index", _rope_index),
        ("rms_norm", qwen.Qwen2_5_VLRMSNorm, "forward", _rms_norm),
        ("cache_update", DynamicLayer, "update", _grow_in_place),
        ("assistant_masks", ProcessorMixin, "_adjust_assistant_masks_indices", _assistant_masks),
    )
    if "trl.trainer.utils" not in sys.modules:  # TRL's import takes seconds: only a training process pays for it
        return patches
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    return patches + (
        ("chunked_logprob", trl_utils, "_ChunkedLogProbFunction", _VocabularyWideTiles),
        ("chunked_backward", chunked_logprob, "_backward_tile", _backward_rows),
    )


def check_libraries() -> None:
    """ConfigError when the installed transformers or TRL lack an attribute a shortcut replaces (they moved or
    renamed it, or predate it), named with the versions to install; install() checks before it patches, so the
    first model a process loads stops there, not an arm's step."""
    gaps = [f"{owner.__name__}.{attribute}" for _, owner, attribute, _ in _patches() if not hasattr(owner, attribute)]
    if gaps:
        from importlib.metadata import version

        from forgetting.config import ConfigError

        raise ConfigError(
            f"transformers {version('transformers')} / trl {version('trl')} lack {', '.join(gaps)}, which the "
            "project's faster paths (forgetting/fast_paths.py) replace: install the versions pyproject.toml asks "
            "for (transformers>=5.24)"
        )


def shortcuts() -> list[str]:
    """The names install() and uninstall() take (TRL's once its trainers are imported)."""
    return [name for name, *_ in _patches()]


def install(names: tuple[str, ...] | None = None) -> None:
    """Use the shortcuts from now on, in every model of this process (idempotent; TRL's once its trainers are
    imported); with the faster paths off (enabled()), transformers' and TRL's own code instead. names: only
    those (shortcuts()), to compare one shortcut against its original (benchmarks/fast_path_ab.py)."""
    if not enabled():
        uninstall(names)
        return
    check_libraries()
    for name, owner, attribute, replacement in _patches():
        if name not in _ORIGINAL and (names is None or name in names):
            _ORIGINAL[name] = getattr(owner, attribute)
            setattr(owner, attribute, replacement)


def uninstall(names: tuple[str, ...] | None = None) -> None:
    """Transformers' and TRL's own code paths again (all, or those names), for side-by-side measurements."""
    for name, owner, attribute, _ in _patches():
        if name in _ORIGINAL and (names is None or name in names):
            setattr(owner, attribute, _ORIGINAL.pop(name))
