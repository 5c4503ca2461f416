"""One way to get a model: the project's tiny Qwen2.5-VL-architecture models (built in forgetting/tiny_models.py),
or the real Qwen2.5-VL.

`load_model(ModelConfig)` takes `micro` | `tiny` (the shipped, pretrained checkpoints in assets/),
a local directory, or a hub id (offline unless HF_HUB_OFFLINE=0), and returns (model, processor).
`batch(processor, samples)` is the one way to turn chat samples into model inputs, for pretraining,
training and evaluation alike: it goes through the processor, which passes `mm_token_type_ids` (without
it, transformers 5 gives image tokens plain 1D positions in training but 3D ones in `generate`).
"""

import hashlib
import json
import os
import re
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import torch
from PIL import Image

from forgetting import fast_paths
from forgetting.config import PROJECT_MODELS, REPO_ROOT, SHIPPED_MODELS, ConfigError, ModelConfig
from forgetting.image_files import IMAGE_FILES
from forgetting.model_files import ModelLoadError, readable

# transformers (from 5.25) swaps layers for kernels fetched from the Hugging Face Hub when a model is loaded and
# switched between training and evaluation on a GPU: code from outside the study whose version nobody pins, and
# that fails offline. The study runs transformers' own layers (on the CPU the same numbers bit for bit, and no
# lookup at every train()/eval() switch); USE_HUB_KERNELS=YES opts back in, and makes other arms (arms.arm_spec).
os.environ.setdefault("USE_HUB_KERNELS", "NO")


def hub_kernels() -> bool:
    """Whether transformers may swap layers for the Hub's kernels (USE_HUB_KERNELS, read as transformers reads it)."""
    return os.environ.get("USE_HUB_KERNELS", "NO").lower() in {"true", "1", "y", "yes", "on"}


ASSETS = REPO_ROOT / "assets"
SHIPPED = {name: ASSETS / f"{name}-base" for name in SHIPPED_MODELS}


def project_size(name: str) -> str:
    """The architecture size of one of the project's own models: 'tiny-think-brief' -> 'tiny'."""
    if name not in PROJECT_MODELS:
        raise ConfigError(f"model.name_or_path: {name!r} is not one of the project's models {PROJECT_MODELS}")
    return name.split("-")[0]


def resolve_model_path(name_or_path: str) -> str:
    """A shipped name (SHIPPED) -> its checkpoint; an existing directory -> itself; else a hub id (offline:
    cached)."""
    if name_or_path in SHIPPED:
        path = SHIPPED[name_or_path]
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model.name_or_path: the shipped {name_or_path!r} checkpoint is missing at {path}; "
                f"rebuild it with: python -m flows.pretrain_base --profile {name_or_path}"
            )
        return str(path)
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path / "config.json").is_file():
        path = REPO_ROOT / path  # a folder of the repository's (assets/...), from anywhere
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"model.name_or_path: {path} is not a model directory (no config.json or adapter_config.json)"
            )
        return str(path.resolve())
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path):
        raise ModelLoadError(
            f"model.name_or_path: {name_or_path!r} is neither one of {', '.join(SHIPPED)}, a local directory, nor a "
            "hub id (org/name)"
        )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ModelLoadError(
                f"model.name_or_path: {name_or_path!r} is a hub id, HF_HUB_OFFLINE=1 and it is not in the local "
                "cache; download it first or give a local directory"
            )
    return name_or_path


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "adapter_config.json")


def architecture_only(path: str | Path) -> bool:
    """Whether a model folder holds an architecture without weights (forgetting/architectures.py writes them; the
    base stage initialises them at random: forgetting/base_model.py:build_base)."""
    path = Path(path)
    return (path / "config.json").is_file() and not any(next(path.glob(p), None) for p in WEIGHT_FILES)


_FINGERPRINTS: dict[tuple, str] = {}


def model_fingerprint(name_or_path: str) -> str:
    """What results made from a model are cached under: its content, not its name. A local directory: the
    sha256 of its top-level files (weights, config, tokenizer and processor files; the model card left out),
    so rebuilding assets/tiny-base in place invalidates the arms and evaluations made from the old one. A hub
    id: the id and, when it is in the local cache, the snapshot (commit) it resolves to. Kept per process,
    keyed on the files' sizes and modification times, so a 7B model's 15 GB are read once a process."""
    import hashlib

    path = Path(name_or_path)
    if not path.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        return f"{name_or_path}@{Path(cached).parent.name}" if isinstance(cached, str) else name_or_path
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != "model_card.json")
    key = (str(path.resolve()), *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 24), b""):
                    digest.update(block)
        _FINGERPRINTS[key] = digest.hexdigest()
    return _FINGERPRINTS[key]


def pick_device(config: ModelConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device: cuda asked for, but no GPU is available")
    return torch.device(config.device)


def pick_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":  # bf16 on CPU is about 11x slower than fp32 and changes losses
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, config.dtype)


LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def load_model(config: ModelConfig, name_or_path: str | None = None, trainable: bool = True, seed: int = 0):
    """(model, processor) for config; name_or_path overrides config.name_or_path (e.g. a checkpoint).
    trainable=False (evaluation): no fresh LoRA adapter, a trained adapter loaded frozen, eval mode.
    seed: where a fresh LoRA adapter's random initial weights come from (the arm's seed), whatever drew random
    numbers in the process before; the process's own random stream is left as it was.

    LoRA (finetune: lora) wraps only the language model's projections: the vision tower reuses the names
    gate_proj/up_proj/down_proj, and a plain name list would adapt it too."""
    path = resolve_model_path(name_or_path or config.name_or_path)
    with LOADING:  # from_pretrained is not thread-safe: two arms loading at once got meta tensors
        model, processor = _load(config, path, trainable, seed)
    model.train(trainable)
    return model, processor


# transformers builds models under a meta-device context; when two Prefect worker threads (the sft and rft
# arms) load at the same time, one of them was left with meta tensors ("Cannot copy out of meta tensor").
# Hold LOADING around anything else that calls from_pretrained (GRPOTrainer loads its reference model).
LOADING = threading.RLock()


def _load(config: ModelConfig, path: str, trainable: bool, seed: int):
    fast_paths.install()  # the same computation, faster vision path (forgetting/fast_paths.py)
    if architecture_only(path):
        raise ModelLoadError(
            f"model: {path} holds an architecture without weights; a study's base stage initialises it at random "
            "(python -m flows.study), writing the base with weights under <output>/base/"
        )
    device = pick_device(config)
    dtype = pick_dtype(config, device)
    with readable(path):
        return _from_files(config, path, trainable, device, dtype, seed)


def _from_files(config: ModelConfig, path: str, trainable: bool, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():  # a trained LoRA arm: its base, with the adapter on top (trainable when LoRA)
        from peft import PeftModel

        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_model_path(base), dtype=dtype).to(device)
        neutral_generation(model)
        return PeftModel.from_pretrained(model, path, is_trainable=trainable and config.finetune == "lora"), processor
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
    neutral_generation(model)
    if trainable and config.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # the adapter's A matrices are drawn at random (its B start at zero)
            model = get_peft_model(
                model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=LORA_TARGETS)
            )
    return model, processor


def neutral_generation(model) -> None:
    """Give the model a generation config that decides nothing but where text ends: a checkpoint's own
    generation_config.json fills every setting a caller leaves unset (Qwen2.5-VL-Instruct's: do_sample, temperature
    0.1, top_k 1, top_p 0.001, repetition_penalty 1.05, which make greedy evaluation penalised and "sampling at
    temperature 1" near-greedy). With it, an unset setting is transformers' default (greedy, no penalty); the
    study samples through forgetting/inference.py:sampling, as TRL's GRPO does."""
    from transformers import GenerationConfig

    old = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=old.bos_token_id, eos_token_id=old.eos_token_id, pad_token_id=old.pad_token_id
    )


# ---------------------------------------------------------------------------------------------------------
# Batches


def chat(prompt: str, image: Image.Image | None = None, answer: str | None = None) -> list[dict]:
    """One sample as chat messages: the image (if any) before the text, as in Qwen's own examples (where
    the tiny models' chat template renders it is its own choice: see chat_template)."""
    content = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def training_template(processor) -> str | None:
    """The chat template to train on: None for the processor's own when it marks the assistant's tokens with
    `{% generation %}` (the project's models), else TRL's training version of it: the same text with the markers
    (TRL keeps them for Qwen2.5-VL's stock template, among others, and SFTTrainer makes the same swap). Without
    markers an assistant-only mask is all zeros: nothing would be learned. ModelLoadError when there is none."""
    template = processor.chat_template
    if isinstance(template, str) and GENERATION_MARKER.search(template):
        return None
    from trl.chat_template_utils import get_training_chat_template

    try:
        return get_training_chat_template(processor)
    except (ValueError, TypeError) as e:
        raise ModelLoadError(
            "the model's chat template has no {% generation %} markers, which assistant-only loss needs, and TRL "
            "knows no training version of it; wrap the assistant's content and its <|im_end|> in "
            "{% generation %}...{% endgeneration %} in the model's chat_template.jinja"
        ) from e


def check_training_template(name_or_path: str) -> None:
    """Before any training: ModelLoadError when the model's chat template cannot give an assistant-only mask. A
    folder whose chat_template.jinja (the template its processor loads) has the markers passes without loading
    the processor, which costs seconds of imports (torchvision) in every flow's preflight."""
    path = resolve_model_path(name_or_path)
    template = Path(path) / "chat_template.jinja"
    if template.is_file() and GENERATION_MARKER.search(template.read_text()):
        return
    from transformers import AutoProcessor

    training_template(AutoProcessor.from_pretrained(path))


def batch(processor, conversations: list[list[dict]], train: bool) -> dict:
    """Model inputs for a list of conversations, left-padded.

    train=True: each conversation ends with the assistant's answer and `labels` keep only the answer
    tokens and <|im_end|> (training_template). train=False: the prompt ends with the assistant's turn opened,
    for generate; a batch of prompts seen before (every checkpoint's evaluation asks the same held-out prompts)
    is copied from PROMPT_BATCHES instead of going through the processor again."""
    if not train:
        return PROMPT_BATCHES.get(processor, conversations)
    return _processed(processor, conversations, train)


def _processed(processor, conversations: list[list[dict]], train: bool) -> dict:
    out = processor.apply_chat_template(
        conversations,
        chat_template=training_template(processor) if train else None,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
        add_generation_prompt=not train,
        return_assistant_tokens_mask=train,
    )
    if train:
        mask = out.pop("assistant_masks")
        out["labels"] = torch.where(mask.bool(), out["input_ids"], -100)
    return dict(out)


class PromptBatches:
    """The processor's output for batches of prompts, kept by content (the processor's tokenizer, template and
    image settings, each message's text and each image's pixels) up to max_bytes, least recently used dropped
    first. Processing is deterministic, so a hit is the same tensors. Callers get the kept tensors themselves, not
    copies (copying the pixels cost 0.15-0.35 s of a tiny evaluation's 4.5): a tensor changed in place since
    (its _version moved) is never handed out again, its batch is processed anew. Off with FORGETTING_FAST_PATHS=0."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.size = 0

    def get(self, processor, conversations: list[list[dict]]) -> dict:
        if not fast_paths.enabled():
            return _processed(processor, conversations, train=False)
        key = hashlib.blake2b(self.fingerprint(processor).encode(), digest_size=20)
        key.update(str(processor.tokenizer.padding_side).encode())
        try:
            for conversation in conversations:
                key.update(json.dumps(conversation, default=_image_digest, sort_keys=True).encode())
        except TypeError:  # something in a conversation with no digest: process it, keep nothing
            return _processed(processor, conversations, train=False)
        key = key.hexdigest()
        if key in self.entries and any(v._version != version for v, version in self.entries[key].values()):
            self.size -= _nbytes(self.entries.pop(key))  # a caller changed it
        if key not in self.entries:
            self.entries[key] = {k: (v, v._version) for k, v in _processed(processor, conversations, False).items()}
            self.size += _nbytes(self.entries[key])
            while self.size > self.max_bytes and len(self.entries) > 1:
                self.size -= _nbytes(self.entries.popitem(last=False)[1])
        self.entries.move_to_end(key)
        return {k: v for k, (v, _) in self.entries[key].items()}

    def fingerprint(self, processor) -> str:
        """What decides the processor's output besides the conversations: its tokenizer, chat template and image
        processor settings (one hash per processor object)."""
        if processor not in self.fingerprints:
            tokenizer = processor.tokenizer
            backend = getattr(tokenizer, "backend_tokenizer", None)
            parts = [
                backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True),
                json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
                str(processor.chat_template),
                processor.image_processor.to_json_string(),
                type(processor).__name__,
            ]
            self.fingerprints[processor] = hashlib.blake2b("\0".join(parts).encode(), digest_size=20).hexdigest()
        return self.fingerprints[processor]


def _nbytes(entry: dict) -> int:
    return sum(v.nbytes for v, _ in entry.values())


def _image_digest(value) -> str:
    """A PIL image in a conversation, as a digest of its mode, size and pixels (json.dumps' default)."""
    if isinstance(value, Image.Image):
        return IMAGE_FILES.digest(value)
    raise TypeError(type(value).__name__)


PROMPT_BATCHES = PromptBatches()
