"""The study's base model (the shipped tiny checkpoint, a fresh pretraining, or a real Qwen2.5-VL) and the
prior-knowledge benchmarks the tiny world holds out.

python -m flows.pretrain_base --profile tiny     # rebuild assets/tiny-base, the shipped checkpoint
"""

import json
import shutil
import time
from pathlib import Path

import torch

from forgetting.config import StudyConfig
from forgetting.models import architecture_only, model_fingerprint, pick_device, project_size, resolve_model_path
from forgetting.pretrain import answered_correct, held_out, jigsaw_probe, pretrain, save_base
from forgetting.storage import image_saver, one_maker, product_dir, stable_hash, write_once
from forgetting.world import ANSWER_FORMATS, PRIOR_TASKS, Item, fingerprint, make_split


def pretrain_dir(config: StudyConfig) -> Path:
    """Where this study's own pretraining goes: <output>/base/<size>-<hash of the pretrain settings>."""
    spec = {"size": config.model.name_or_path, "pretrain": config.pretrain.model_dump(mode="json")}
    return product_dir(config.output.path, "base", f"{config.model.name_or_path}-{stable_hash(spec)[:10]}")


def pretrain_base_model(config: StudyConfig, out: Path, log=lambda metrics, step: None, command: str = "") -> dict:
    """Pretrain config.model.name_or_path (one of PROJECT_MODELS) on the tiny world and save it with its card.
    A base that learned the think style is also probed on the jigsaw's think prompt: greedy, and 16 samples at
    the RFT arm's temperature and completion length."""
    size = project_size(config.model.name_or_path)
    started = time.perf_counter()
    device = pick_device(config.model)
    model, processor, history = pretrain(size, config.pretrain, log=log, device=device)
    wall = time.perf_counter() - started
    probe = jigsaw_probe(model, processor, seed=config.pretrain.seed, puzzles=config.puzzles)
    log(probe, config.pretrain.steps)
    final = history[max(history)]
    think = {}
    if config.pretrain.think_share > 0:
        rft = config.arms.rft
        think_probe = jigsaw_probe(
            model,
            processor,
            samples=16,
            seed=config.pretrain.seed,
            puzzles=config.puzzles,
            style="think",
            temperature=rft.temperature,
            max_new_tokens=rft.max_new_tokens,
        )
        log({k.replace("jigsaw.", "jigsaw_think."): v for k, v in think_probe.items()}, config.pretrain.steps)
        answered = {
            name.removeprefix("heldout_think."): sum(answered_correct(model, processor, items)) / len(items)
            for name, items in held_out(config.pretrain, styles=("think",)).items()
        }
        think = {
            "heldout_answered_think": {task: round(v, 4) for task, v in answered.items()},
            "heldout_answered_think_measure": "greedy generation under the think prompt, well formed with the right "
            "answer inside <answer> (as the benchmarks grade it)",
            "heldout_accuracy_think": {
                k.removeprefix("heldout_think."): round(v, 4)
                for k, v in final.items()
                if k.startswith("heldout_think.")
            },
            "heldout_think_measure": "teacher-forced exact of the whole think completion, reasoning included",
            "jigsaw_think": {k.removeprefix("jigsaw."): round(v, 4) for k, v in think_probe.items()},
            "jigsaw_think_probe": f"the same puzzles, think prompt, greedy and 16 samples at T={rft.temperature} "
            f"(at most {rft.max_new_tokens} tokens each)",
        }
    card = {
        "command": command or f"python -m flows.pretrain_base --profile {config.name}",
        "size": size,
        "seed": config.pretrain.seed,
        "pretrain": config.pretrain.model_dump(mode="json"),
        "data": "tiny world train splits: " + ", ".join(PRIOR_TASKS),
        "data_hash": fingerprint("train", config.pretrain.seed),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_accuracy": {
            k.removeprefix("heldout."): round(v, 4) for k, v in final.items() if k.startswith("heldout.")
        },
        "heldout_curve": {str(step): {k: round(v, 4) for k, v in s.items()} for step, s in history.items()},
        "jigsaw": {k.removeprefix("jigsaw."): round(v, 4) for k, v in probe.items()},
        "jigsaw_probe": f"64 test puzzles of the profile's settings ({probe_puzzles(config)}), direct prompt, "
        "greedy and 8 samples at T=1",
        "wall_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        **think,
    }
    if config.pretrain.start_from:
        card["start_from_fingerprint"] = model_fingerprint(resolve_model_path(config.pretrain.start_from))
    save_base(model, processor, out, card)
    return card


def probe_puzzles(config: StudyConfig) -> str:
    p = config.puzzles
    return f"{p.grid} {p.source}, cue {p.cue}, difficulty {p.difficulty}"


def resolve_base(config: StudyConfig) -> str:
    """A path or hub id the loader takes: the study's own pretraining when model.pretrain, the study's random
    initialisation when the model named is an architecture without weights (forgetting/architectures.py), else the
    model named."""
    if config.model.pretrain:
        return str(pretrain_dir(config))
    named = resolve_model_path(config.model.name_or_path)
    if architecture_only(named):
        spec = [model_fingerprint(named), config.pretrain.seed]
        return str(product_dir(config.output.path, "base", f"{Path(named).name}-random-{stable_hash(spec)[:10]}"))
    return named


def build_base(config: StudyConfig, target: Path, log=lambda metrics, step: None) -> None:
    """Make the study's own base at target (resolve_base) unless it is there: pretrain it (model.pretrain), or
    initialise the architecture named at random (seed: pretrain.seed) and save it with the architecture's
    tokenizer, chat template, processor and generation settings. A model named as it is needs nothing."""
    if (target / "model_card.json").is_file():
        return
    if not config.model.pretrain and not architecture_only(resolve_model_path(config.model.name_or_path)):
        return
    with one_maker(target):  # a second process making the same base waits for the first
        if (target / "model_card.json").is_file():
            return
        if config.model.pretrain:
            pretrain_base_model(config, target, log)
        else:
            initialise_base(config, Path(resolve_model_path(config.model.name_or_path)), target)


def initialise_base(config: StudyConfig, named: Path, target: Path) -> None:
    """The architecture named, initialised at random with pretrain.seed, saved at target with its tokenizer,
    chat template, processor and generation settings."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    started = time.perf_counter()
    with write_once(target) as tmp:
        with torch.random.fork_rng():
            torch.manual_seed(config.pretrain.seed)
            model = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(named))
        model.save_pretrained(tmp)
        for file in named.iterdir():  # its tokenizer, template, processor and generation settings, not the model's
            if file.is_file() and file.name != "config.json":
                shutil.copy(file, tmp / file.name)
        card = {
            "initialised": "at random",
            "architecture": str(named),
            "architecture_fingerprint": model_fingerprint(str(named)),
            "seed": config.pretrain.seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "wall_time_s": round(time.perf_counter() - started, 1),
        }
        (tmp / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")


def heldout_dir(config: StudyConfig) -> Path:
    spec = {"items": fingerprint("test", config.pretrain.seed), "n": config.pretrain.eval_items}
    return product_dir(config.output.path, "world", f"heldout-{stable_hash(spec)[:10]}")


def write_heldout_sets(config: StudyConfig) -> Path:
    """The tiny world's general benchmarks: one JSONL (+ PNGs) per prior-knowledge task's held-out split."""
    out = heldout_dir(config)
    with one_maker(out):
        if not out.is_dir():
            with write_once(out) as tmp:
                for task in PRIOR_TASKS:
                    write_split(make_split(task, "test", config.pretrain.eval_items, config.pretrain.seed), tmp)
    return out


def write_split(items: list[Item], out: Path) -> Path:
    """items as <out>/<task>.jsonl (id, prompt, answer, answer format, image path relative to out) plus PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    task = items[0].task
    with open(out / f"{task}.jsonl", "w") as f, image_saver() as save:
        for i, item in enumerate(items):
            image = None
            if item.image is not None:
                image = f"images/{task}-{i:05d}.png"
                (out / "images").mkdir(exist_ok=True)
                save(item.image, out / image)
            f.write(
                json.dumps(
                    {
                        "id": f"{task}-{i:05d}",
                        "prompt": item.prompt,
                        "answer": item.answer,
                        "format": ANSWER_FORMATS[task],
                        "image": image,
                    }
                )
                + "\n"
            )
    return out / f"{task}.jsonl"
