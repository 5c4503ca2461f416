"""Qwen2.5-VL-3B's architecture as a folder the study takes for model.name_or_path: its config.json settings
(widths, heads, vision tower, multimodal rope), optionally cut to fewer text layers and vision blocks, the stock
chat template (no {% generation %} markers) and the stock generation settings, with the project's tokenizer, and
no weights. The base stage initialises such a folder at random, once, into the study's output
(forgetting/base_model.py:build_base); from there the study runs as on the real model. The paper profiles' code
path runs on a CPU this way (configs/paper-3b-smoke.yaml on the shipped assets/qwen2.5-vl-3b-smoke: 2 text
layers, 2 vision blocks), and benchmarks/gpu_arms.py measures a full-size one on a GPU.

    python -m forgetting.architectures assets/qwen2.5-vl-3b-smoke --text-layers 2 --vision-blocks 2
"""

import argparse
import json
from pathlib import Path

from forgetting.models import SHIPPED

# From Qwen/Qwen2.5-VL-3B-Instruct's config.json on the hub (rope_scaling there is rope_parameters in transformers 5).
TEXT = dict(
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    max_position_embeddings=128000,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    tie_word_embeddings=True,
)
VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    hidden_act="silu",
    in_chans=3,
    out_hidden_size=2048,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
# Its processor's pixel range and its generation_config.json's sampling settings (top_k 1: greedy "samples",
# which the study sets aside: forgetting/models.py:neutral_generation).
MIN_PIXELS_STOCK, MAX_PIXELS_STOCK = 56 * 56, 28 * 28 * 16384
GENERATION = dict(do_sample=True, temperature=0.1, top_k=1, top_p=0.001, repetition_penalty=1.05)


def stock_chat_template() -> str:
    """Qwen2.5-VL-Instruct's own chat template, as TRL keeps it to recognise the model (its training version adds
    the markers SFT's assistant-only loss needs: forgetting/models.py:training_template)."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()


def project_tokenizer(chat_template: str | None = None):
    """The project's tokenizer (assets/tiny-base's), with chat_template when given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED["tiny"], local_files_only=True)  # recorded: the same always
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def architecture_config(tokenizer, text_layers: int | None = None, vision_blocks: int | None = None, vocab_size=None):
    """Qwen2.5-VL-3B's Qwen2_5_VLConfig, cut to text_layers and vision_blocks when given (full attention in the
    vision blocks the cut keeps of 7, 15, 23, 31, else in its last), its special tokens the tokenizer's, its
    vocabulary the tokenizer's or vocab_size (151936: the real embedding and head)."""
    from transformers import Qwen2_5_VLConfig

    layers, blocks = text_layers or TEXT["num_hidden_layers"], vision_blocks or VISION["depth"]
    ids = tokenizer.convert_tokens_to_ids
    eos, pad = ids("<|im_end|>"), ids("<|endoftext|>")
    full_attention = [i for i in VISION["fullatt_block_indexes"] if i < blocks] or [blocks - 1]
    return Qwen2_5_VLConfig(
        text_config={
            **TEXT,
            "num_hidden_layers": layers,
            "vocab_size": vocab_size or len(tokenizer),
            "bos_token_id": pad,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        vision_config={**VISION, "depth": blocks, "fullatt_block_indexes": full_attention},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def write_architecture(out: Path, text_layers: int | None = None, vision_blocks: int | None = None) -> Path:
    """Qwen2.5-VL-3B's architecture in out (architecture_config), with the project's tokenizer (whose vocabulary
    sizes the embedding), the stock chat template, processor and generation settings, and no weights."""
    from transformers import GenerationConfig, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    template = stock_chat_template()
    tokenizer = project_tokenizer(template)
    config = architecture_config(tokenizer, text_layers, vision_blocks)
    eos, pad = config.text_config.eos_token_id, config.text_config.pad_token_id
    layers, blocks = config.text_config.num_hidden_layers, config.vision_config.depth
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad, **GENERATION).save_pretrained(out)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS_STOCK, max_pixels=MAX_PIXELS_STOCK),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    processor.save_pretrained(out)
    card = {
        "architecture": "Qwen2.5-VL-3B-Instruct (config.json on the hub)",
        "text_layers": f"{layers} of {TEXT['num_hidden_layers']}",
        "vision_blocks": f"{blocks} of {VISION['depth']}",
        "tokenizer": f"the project's ({len(tokenizer)} tokens, from assets/tiny-base)",
        "weights": "none: the study's base stage initialises them at random (pretrain.seed)",
        "written_by": f"python -m forgetting.architectures <folder> --text-layers {layers} --vision-blocks {blocks}",
    }
    (out / "architecture.json").write_text(json.dumps(card, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--text-layers", type=int, default=None)
    parser.add_argument("--vision-blocks", type=int, default=None)
    args = parser.parse_args(argv)
    print(write_architecture(args.out, args.text_layers, args.vision_blocks))


if __name__ == "__main__":
    main()
