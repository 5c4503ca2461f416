"""The puzzles' images and the dataset on disk: synthetic images or crops of photos (bundled or a folder),
shuffled into puzzles and written to <output>/puzzles/<dataset-hash>/ with a manifest and a contact sheet.
What a puzzle means (tiles, answers, prompts, reward) is forgetting/puzzles.py.

    python -m flows.puzzles --profile micro --set puzzles.source=bundled --output-dir /tmp/run
"""

import hashlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from forgetting.config import PuzzleConfig
from forgetting.drawing import CELL_COLOURS, COLOURS
from forgetting.image_files import decode_rgb
from forgetting.puzzles import format_answer, make_prompt, random_answer, restore_image, shuffle_image
from forgetting.storage import (
    image_saver,
    one_maker,
    package_path,
    product_dir,
    read_json,
    read_json_lines,
    stable_hash,
    write_once,
)

# Bump when a change to this file or to forgetting/puzzles.py changes the bytes of a generated dataset.
GENERATOR_VERSION = 1
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# Image sources. Each yields the unshuffled square image of puzzle i of a split.


# The synthetic image's corners (top-left, top-right, bottom-left, bottom-right) for the corner cues.
# 'code_colours': the tiny world's colour codes 1..4 (forgetting/world.py, red 1, green 2, blue 3, yellow 4), so a
# tile's colour code is its original position and the base's own answers are often right. 'new_colours':
# black, orange, purple, white, colours the base names but has no code for, so the puzzle's colour-to-position
# map is new to it and contradicts nothing it knows.
CORNER_NAMES = {"code_colours": CELL_COLOURS, "new_colours": ("black", "orange", "purple", "white")}
CORNER_CUES = {cue: tuple(COLOURS[c] for c in names) for cue, names in CORNER_NAMES.items()}
CUES = ("gradient", *CORNER_CUES)


def synthetic_image(rng: np.random.Generator, side: int, difficulty: float, cue: str = "gradient") -> Image.Image:
    """A colour cue plus clutter; difficulty trades one for the other. At 0 a tile's colour says where it
    belongs; at 1 only edges that run on across tiles do. cue 'gradient': red grows left to right, green top
    to bottom (corners dark, red, green, yellow), over a random blue wave; 'code_colours' and 'new_colours':
    a blend of their CORNER_CUES with a little noise."""
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    if cue in CORNER_CUES:
        x, y = ramp[None, :, None], ramp[:, None, None]
        weights = ((1 - x) * (1 - y), x * (1 - y), (1 - x) * y, x * y)  # bilinear, one per corner
        corners = CORNER_CUES[cue]
        blend = sum(w * np.array(c, dtype=np.float32) for w, c in zip(weights, corners, strict=True))
        pixels = blend + rng.normal(0, 6, (side, side, 3))
        if difficulty > 0:
            pixels = (1.0 - difficulty) * pixels + difficulty * rng.uniform(0, 255, 3)
    elif cue == "gradient":
        amplitude = 220.0 * (1.0 - difficulty)
        jitter = difficulty * (255.0 - amplitude)
        red = 16 + rng.uniform(0, jitter + 1) + amplitude * ramp[None, :]
        green = 16 + rng.uniform(0, jitter + 1) + amplitude * ramp[:, None]
        # Blue is a random wave: every image differs, and the red/green cue is left alone.
        fx, fy = rng.uniform(-3, 3, 2)
        phase = rng.uniform(0, 2 * np.pi)
        blue = 128 + 80 * np.sin(2 * np.pi * (fx * ramp[None, :] + fy * ramp[:, None]) + phase)
        pixels = np.stack(np.broadcast_arrays(red, green, blue), axis=-1)
    else:
        raise ValueError(f"synthetic cue must be one of {', '.join(CUES)}, got {cue!r}")
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(round(difficulty * 12)):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * side
        w, h = rng.uniform(0.15, 0.6, 2) * side
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [x0, y0, x0 + w, y0 + h]
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(side * 0.05) + 1)
    if difficulty > 0:
        noise = rng.normal(0, 30 * difficulty, (side, side, 3))
        pixels = np.asarray(image, dtype=np.float32) + noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image


def random_square_crop(rng: np.random.Generator, photo: Image.Image, side: int) -> Image.Image:
    """A random square crop (50-100% of the short side), maybe mirrored, rescaled to side x side."""
    short = min(photo.size)
    crop = int(short * rng.uniform(0.5, 1.0))
    x = int(rng.integers(0, photo.width - crop + 1))
    y = int(rng.integers(0, photo.height - crop + 1))
    image = photo.crop((x, y, x + crop, y + crop)).resize((side, side), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def bundled_photo_paths() -> list[Path]:
    """The real photos scikit-image and scikit-learn ship (no download), large enough to crop; found without
    importing either package (storage.package_path)."""
    skimage_dir = package_path("skimage", "data")
    names = [
        "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
        "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
        "ihc.png", "logo.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg",
        "text.png",
    ]  # fmt: skip
    paths = [skimage_dir / n for n in names]
    sklearn_dir = package_path("sklearn", "datasets", "images")
    paths += [sklearn_dir / "china.jpg", sklearn_dir / "flower.jpg"]
    return [p for p in paths if p.is_file()]


def open_rgb(path: Path) -> Image.Image | None:
    """The decoded image, or None when the file is unreadable or corrupt."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Exception:  # noqa: BLE001 - any decoder failure means "skip this file"
        return None


def folder_image_paths(folder: Path) -> tuple[list[Path], int]:
    """Image files under folder (recursive, sorted) and the count of other files ignored."""
    images, ignored = [], 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                images.append(Path(root) / name)
            else:
                ignored += 1
    return sorted(images), ignored


def split_pool(paths: list[Path], config: PuzzleConfig) -> dict[str, list[Path]]:
    """Disjoint train/test pools of source photos, in a seeded order."""
    order = list(paths)
    random.Random(config.seed).shuffle(order)
    share = config.n_test / (config.n_train + config.n_test)
    n_test = min(len(order) - 1, max(1, round(len(order) * share)))
    return {"test": order[:n_test], "train": order[n_test:]}


class PuzzleError(ValueError):
    """The puzzle source cannot produce the dataset asked for."""


@dataclass
class SourceReport:
    kind: str
    fingerprint: str
    pool_sizes: dict[str, int]
    skipped: list[str]
    ignored_non_image: int = 0


class PhotoSource:
    """bundled or folder: crops of photos from disjoint per-split pools; corrupt files are skipped."""

    def __init__(self, paths: list[Path], config: PuzzleConfig, root: Path | None, ignored: int = 0):
        if len(paths) < 2:
            where = f"folder {root}" if root else "the bundled photos"
            raise PuzzleError(f"{where}: need at least 2 image files (one per split), found {len(paths)}")
        self.config, self.root = config, root
        self.pools = split_pool(paths, config)
        self.cache: dict[Path, Image.Image | None] = {}
        self.skipped: set[Path] = set()
        self.ignored = ignored

    def _name(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if self.root else path.name

    def fingerprint(self) -> str:
        """Names and sizes of the source files: cheap, and changes when the folder does."""
        return stable_hash(sorted((self._name(p), p.stat().st_size) for pool in self.pools.values() for p in pool))

    def _photo(self, path: Path) -> Image.Image | None:
        # Bundled photos are few and small: keep them. A folder may be COCO: open each file when used.
        if self.root is None:
            if path not in self.cache:
                self.cache[path] = open_rgb(path)
            return self.cache[path]
        return open_rgb(path)

    def images(self, split: str, count: int, side: int) -> Iterator[Image.Image]:
        pool = self.pools[split]
        rng = np.random.default_rng([self.config.seed, SPLITS.index(split), 7])
        made, cursor, usable_this_pass = 0, 0, 0
        while made < count:
            if cursor == len(pool):
                if usable_this_pass == 0:
                    where = f"folder {self.root}" if self.root else "bundled photos"
                    raise PuzzleError(
                        f"{where}: no usable image for the {split} split "
                        f"({len(pool)} files tried, all unreadable or corrupt)"
                    )
                cursor, usable_this_pass = 0, 0
            path = pool[cursor]
            cursor += 1
            photo = self._photo(path)
            if photo is None:
                self.skipped.add(path)
                continue
            usable_this_pass += 1
            made += 1
            yield random_square_crop(rng, photo, side)

    def report(self) -> SourceReport:
        return SourceReport(
            kind=self.config.source,
            fingerprint=self.fingerprint(),
            pool_sizes={s: len(p) for s, p in self.pools.items()},
            skipped=sorted(self._name(p) for p in self.skipped),
            ignored_non_image=self.ignored,
        )


class SyntheticSource:
    def __init__(self, config: PuzzleConfig):
        self.config = config

    def fingerprint(self) -> str:
        return "synthetic"

    def images(self, split: str, count: int, side: int) -> Iterator[Image.Image]:
        for i in range(count):
            rng = np.random.default_rng([self.config.seed, SPLITS.index(split), i])
            yield synthetic_image(rng, side, self.config.difficulty, self.config.cue)

    def report(self) -> SourceReport:
        return SourceReport("synthetic", "synthetic", {s: 0 for s in SPLITS}, [])


def open_source(config: PuzzleConfig) -> PhotoSource | SyntheticSource:
    if config.source == "synthetic":
        return SyntheticSource(config)
    if config.source == "bundled":
        return PhotoSource(bundled_photo_paths(), config, root=None)
    folder = Path(config.folder).expanduser().resolve()
    if not folder.is_dir():
        raise PuzzleError(f"puzzles.folder: {folder} is not a directory")
    paths, ignored = folder_image_paths(folder)
    return PhotoSource(paths, config, root=folder, ignored=ignored)


# The dataset on disk: <output>/puzzles/<dataset-hash>/{train,test}.jsonl, images/, manifest.json


def dataset_hash(config: PuzzleConfig, source_fingerprint: str) -> str:
    """Names the dataset: what determines its bytes, not where the folder lies or how it is drawn."""
    spec = config.model_dump(mode="json", exclude={"folder", "contact_sheet"})
    spec.update(side=config.side, generator_version=GENERATOR_VERSION, source_fingerprint=source_fingerprint)
    return stable_hash(spec)[:16]


@dataclass(frozen=True)
class PuzzleDataset:
    """Where a generated dataset lies; what tasks pass around instead of the data."""

    path: Path
    dataset_hash: str

    @property
    def manifest(self) -> dict:
        return read_json(self.path / "manifest.json")

    def records(self, split: str) -> list[dict]:
        return read_json_lines(self.path / f"{split}.jsonl")

    def image(self, record: dict, key: str = "image") -> Image.Image:
        return decode_rgb(self.image_path(record, key))

    def image_path(self, record: dict, key: str = "image") -> str:
        return str(self.path / record[key])


def _write_split(
    out: Path, split: str, images: Iterator[Image.Image], config: PuzzleConfig, seen: dict[str, str]
) -> list[dict]:
    rows, cols = config.shape
    rng = random.Random(f"{config.seed}-{split}-answers")
    prompts = {style: make_prompt(rows, cols, style) for style in ("direct", "think")}
    records = []
    with image_saver() as save:
        for i, source in enumerate(images):
            pixel_hash = hashlib.sha256(source.tobytes()).hexdigest()
            if seen.setdefault(pixel_hash, split) != split:
                raise PuzzleError(f"a {split} puzzle's source image equals a {seen[pixel_hash]} one")
            answer = random_answer(rng, rows * cols)
            image_path, source_path = f"images/{split}-{i:06d}.png", f"images/{split}-{i:06d}-source.png"
            save(shuffle_image(source, answer, rows, cols), out / image_path)
            save(source, out / source_path)
            records.append(
                {
                    "id": f"{split}-{i:06d}",
                    "image": image_path,
                    "source_image": source_path,
                    "grid": [rows, cols],
                    "answer": answer,
                    "prompt_direct": prompts["direct"],
                    "prompt_think": prompts["think"],
                }
            )
    with open(out / f"{split}.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return records


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def plan_dataset(config: PuzzleConfig, output_dir: Path) -> PuzzleDataset:
    """Where the dataset for config lies (or will), without generating it."""
    digest = dataset_hash(config, open_source(config).fingerprint())
    return PuzzleDataset(product_dir(Path(output_dir).resolve(), "puzzles", digest), digest)


def generate_puzzles(config: PuzzleConfig, output_dir: Path) -> PuzzleDataset:
    """Write the dataset for config under output_dir/puzzles/<hash>, or reuse it if it is already there.

    Written to a temporary folder and renamed at the end: a killed run never leaves half a dataset."""
    source = open_source(config)
    digest = dataset_hash(config, source.fingerprint())
    final = product_dir(Path(output_dir).resolve(), "puzzles", digest)
    with one_maker(final):  # a study's seeds side by side make their common puzzles once
        if not (final / "manifest.json").is_file():
            _write_dataset(final, config, source, digest)
    return PuzzleDataset(final, digest)


def _write_dataset(final: Path, config: PuzzleConfig, source, digest: str) -> None:
    with write_once(final) as tmp:
        (tmp / "images").mkdir()
        seen: dict[str, str] = {}
        counts = {}
        for split, count in (("train", config.n_train), ("test", config.n_test)):
            records = _write_split(tmp, split, source.images(split, count, config.side), config, seen)
            counts[split] = len(records)
        dataset = PuzzleDataset(tmp, digest)
        sheet_records = dataset.records("test")[: config.contact_sheet]
        contact_sheet(dataset, sheet_records).save(tmp / "contact_sheet.png")
        manifest = {
            "dataset_hash": digest,
            "generator_version": GENERATOR_VERSION,
            "config": config.model_dump(mode="json"),
            "side": config.side,
            "counts": counts,
            "source": asdict(source.report()),
            "content_sha256": _content_hash(tmp),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def contact_sheet(dataset: PuzzleDataset, records: list[dict], cell: int = 160) -> Image.Image:
    """Puzzles for people to look at: shuffled image, its answer, and the image restored from it."""
    font = ImageFont.load_default(size=13)
    label_h = 36
    sheet = Image.new("RGB", (2 * cell + 30, len(records) * (cell + label_h) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for row, record in enumerate(records):
        rows, cols = record["grid"]
        shuffled = dataset.image(record)
        restored = restore_image(shuffled, record["answer"], rows, cols)
        y = 10 + row * (cell + label_h)
        for col, im in enumerate((shuffled, restored)):
            x = 10 + col * (cell + 10)
            sheet.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            draw_grid(draw, x, y, cell, rows, cols)
        draw.text((10, y + cell + 2), f"{record['id']}  answer: {format_answer(record['answer'])}",
                  fill="black", font=font)  # fmt: skip
        draw.text((10 + cell + 10, y + cell + 18), "restored", fill="gray", font=font)
    return sheet


def draw_grid(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, rows: int, cols: int) -> None:
    for r in range(1, rows):
        draw.line([(x, y + r * size // rows), (x + size, y + r * size // rows)], fill="white", width=1)
    for c in range(1, cols):
        draw.line([(x + c * size // cols, y), (x + c * size // cols, y + size)], fill="white", width=1)
