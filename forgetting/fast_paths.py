"""Shortcuts that compute the same thing faster, installed for the whole process (models.load_model calls
install(); every instance of the classes uses them, GRPO's reference model included). Three in Qwen2.5-VL's vision
path:

- The patch embedding as one matrix product. The model cuts images into patches before the tower and embeds
  each with a Conv3d whose kernel equals its stride, which is a product of the flattened patches with the
  flattened kernel; oneDNN's conv3d ran several times slower than that product on CPU.
- Each distinct image through the vision tower once per forward. GRPO repeats a prompt, image included,
  num_generations times in one batch (generation, the policy's and the reference model's forward); the tower
  sees every image on its own (attention within an image), so encoding one copy and repeating its features
  gives every copy the same features, and autograd sums the copies' gradients into the one encoding.

- Attention within each image (or window) of the vision tower in one batched call when every image has the same
  size. transformers' tower calls attention once per image on CPU (only flash-attention takes the whole list at
  once), some thousand calls per evaluation of the tiny model; one call over the images as a batch computes each
  image's attention alike, bit for bit.

None of these changes what is computed, only the order of floating-point sums (results agree to float rounding;
benchmarks/step_flops.py --compare measures the time, tests/test_fast_paths.py the agreement). And one in
generation:

- The key-value cache grown in place. transformers' DynamicLayer appends each new token's keys and values by
  concatenation, which copies the whole cache at every token of every layer; without gradients (generation, the
  reference model, evaluation) a layer here writes them into spare room it keeps past its end and hands attention
  views of the filled part: the same numbers bit for bit, one copy per growth instead of one per token.

And one in the processor, for SFT's batches (TRL's collator asks for the assistant tokens' mask):

- The assistant mask from the tokens' character offsets in one comparison per answer span. transformers walks
  every token's offsets as tensor elements in Python: a tiny SFT batch of 16 took 36-40 ms to collate, now 17-18;
  the same 0s and 1s.

Set FORGETTING_FAST_PATHS=0 to run transformers' and TRL's own code.
"""

import bisect
import os

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


def _vision_attention(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen2_5_VLVisionAttention.forward with the images (or windows: cu_seqlens) as the batch of one attention
    call, when they are all the same length and attention is sdpa; otherwise transformers' own, which calls
    attention once per image."""
    lengths = cu_seqlens.diff().tolist()
    if self.config._attn_implementation != "sdpa" or len(lengths) < 2 or len(set(lengths)) != 1:
        return _ORIGINAL["vision_attention"](self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    rows = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(rows, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    query, key = apply_rotary_pos_emb_vision(query, key, *position_embeddings)
    query, key, value = (
        t.reshape(len(lengths), lengths[0], self.num_heads, -1).transpose(1, 2) for t in (query, key, value)
    )
    out, _ = sdpa_attention_forward(
        self, query, key, value, attention_mask=None, scaling=self.scaling,
        dropout=self.attention_dropout if self.training else 0.0, is_causal=False, **kwargs,
    )  # fmt: skip
    return self.proj(out.reshape(rows, -1).contiguous())


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


def enabled() -> bool:
    """Whether the project's faster paths are on: this module's and GRPO's shared prompts
    (forgetting/shared_prompts.py). FORGETTING_FAST_PATHS=0 turns them off (to compare, or to rule them out)."""
    return os.environ.get("FORGETTING_FAST_PATHS", "1") != "0"


def _patches() -> tuple:
    """(name in _ORIGINAL, class, attribute, replacement) of every shortcut."""
    from transformers.cache_utils import DynamicLayer
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.processing_utils import ProcessorMixin

    return (
        ("patch_embed", qwen.Qwen2_5_VisionPatchEmbed, "forward", _patch_embed),
        ("get_image_features", qwen.Qwen2_5_VLModel, "get_image_features", _image_features),
        ("vision_attention", qwen.Qwen2_5_VLVisionAttention, "forward", _vision_attention),
        ("cache_update", DynamicLayer, "update", _grow_in_place),
        ("assistant_masks", ProcessorMixin, "_adjust_assistant_masks_indices", _assistant_masks),
    )


def install() -> None:
    """Use the shortcuts from now on, in every model of this process (idempotent); with the faster paths off
    (enabled()), transformers' own code instead."""
    if not enabled():
        uninstall()
        return
    if _ORIGINAL:
        return
    for name, owner, attribute, replacement in _patches():
        _ORIGINAL[name] = getattr(owner, attribute)
        setattr(owner, attribute, replacement)


def uninstall() -> None:
    """Transformers' own code paths again (for side-by-side measurements)."""
    if not _ORIGINAL:
        return
    for name, owner, attribute, _ in _patches():
        setattr(owner, attribute, _ORIGINAL.pop(name))
