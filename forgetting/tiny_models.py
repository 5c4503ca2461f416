"""The project's own tiny Qwen2.5-VL models: their tokenizer (Qwen's special tokens, digits one token each), chat
template, processor and architecture sizes (micro, tiny, small). forgetting/pretrain.py pretrains them;
forgetting/models.py loads them like any checkpoint.
"""

from collections.abc import Iterable

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-style chat. trim_blocks is on, so newlines are written explicitly. The assistant's content and its
# <|im_end|> sit in a {% generation %} block, which gives TRL and our pretraining the assistant-only mask.
# Where a user turn's image goes is the template's choice, saved with the processor, so every caller builds
# messages the same way (image part, then text) and each model reads images where it learned to:
#   first: in the order of the content parts, as Qwen's own template does (shipped bases before 2026-11-26);
#   last:  after the text (the shipped bases now). A tiny model's rotary positions (theta 10) have no
#          position-free dimensions, so the answer finds image tokens by content only at a distance it has
#          learned; with the image last that distance is the same for every prompt. Measured: 600
#          pretraining steps on colour, shape, count, digit and arithmetic reached held-out mean 0.317 with
#          the image last, 0.203 with it first.
_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_RENDER = {
    "first": (
        "{%- for part in content -%}"
        "{%- if part.type == 'image' -%}" + _IMAGE + "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
        "{%- endfor -%}"
    ),
    "last": (
        "{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}"
        "{%- for part in content if part.type == 'image' -%}" + _IMAGE + "{%- endfor -%}"
    ),
}


def chat_template(image_position: str = "last") -> str:
    if image_position not in _RENDER:
        raise ValueError(f"image_position must be 'first' or 'last', got {image_position!r}")
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}" + _RENDER[image_position] + "{%- endif -%}"
        "{%- endmacro -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'assistant' -%}"
        "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ render(message.content) }}{{ '<|im_end|>' }}"
        "{% endgeneration %}"
        "{{ '\\n' }}"
        "{%- else -%}"
        "{{ '<|im_start|>' + message.role + '\\n' }}{{ render(message.content) }}{{ '<|im_end|>\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


# Text / vision sizes of the tiny models. Rope theta 10 with mrope_section [0, 8, 8] (temporal, height,
# width): with Qwen's default (1e4, [4, 6, 6]) a tiny model cannot tell where an image token sits.
TINY_SIZES = {
    "micro": dict(hidden=64, layers=2, heads=2, kv_heads=1, ffn=256, v_depth=1, v_hidden=64, v_heads=2, v_ffn=128),
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=2, ffn=512, v_depth=2, v_hidden=64, v_heads=2, v_ffn=256),
    "small": dict(hidden=256, layers=6, heads=8, kv_heads=2, ffn=768, v_depth=4, v_hidden=128, v_heads=4, v_ffn=512),
}
MIN_PIXELS, MAX_PIXELS = 28 * 28, 28 * 28 * 1024


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 768, image_position: str = "last"):
    """A byte-level BPE (digits one token each) with Qwen's special tokens, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="left",
        chat_template=chat_template(image_position),
    )
    return tokenizer


def build_processor(tokenizer):
    """Qwen2.5-VL's processor around the tokenizer, with the tokenizer's chat template."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )


def tiny_model_config(size: str, tokenizer):
    from transformers import Qwen2_5_VLConfig

    s = TINY_SIZES[size]
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=s["hidden"],
            intermediate_size=s["ffn"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [0, 8, 8]},
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=s["v_depth"],
            hidden_size=s["v_hidden"],
            intermediate_size=s["v_ffn"],
            num_heads=s["v_heads"],
            out_hidden_size=s["hidden"],
            fullatt_block_indexes=[s["v_depth"] - 1],
            window_size=112,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_tiny_model(size: str, processor, seed: int = 0):
    """A randomly initialised tiny Qwen2.5-VL (float32)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_model_config(size, processor.tokenizer))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model
