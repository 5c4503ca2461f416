import hashlib
import json
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from forgetting.config import PuzzleConfig
from forgetting.drawing import CELL_COLOURS, COLOURS
from forgetting.puzzle_data import (
    CORNER_CUES,
    CORNER_NAMES,
    PuzzleError,
    generate_puzzles,
    open_source,
    plan_dataset,
    synthetic_image,
)
from forgetting.puzzles import (
    Reward,
    format_answer,
    make_prompt,
    make_target,
    parse_answer,
    restore_image,
    score_answer,
    shuffle_image,
    teacher_reasoning,
    tile_boxes,
    well_formed_think,
)
from forgetting.storage import image_saver, one_maker

permutations = st.integers(2, 36).flatmap(lambda n: st.permutations(list(range(1, n + 1))))


# --- parser and reward -----------------------------------------------------------------------------------


@given(text=st.text(), n=st.integers(1, 36))
def test_parser_never_raises_and_returns_a_permutation_or_none(text, n):
    parsed = parse_answer(text, n)
    assert parsed is None or sorted(parsed) == list(range(1, n + 1))


@given(blob=st.binary(max_size=2000), n=st.integers(2, 36))
def test_parser_and_reward_take_binary_junk(blob, n):
    parse_answer(blob, n)
    reward = score_answer(blob, list(range(n, 0, -1)))
    assert 0.0 <= reward.total <= 2.5


@given(perm=permutations, sep=st.sampled_from([" ", ",", ", ", "\n", " | "]))
def test_formatted_answers_parse_back(perm, sep):
    assert parse_answer(sep.join(map(str, perm)), len(perm)) == perm
    assert parse_answer(format_answer(perm), len(perm)) == perm


@given(perm=permutations, noise=st.text(alphabet="abc <>/\n", max_size=30))
def test_last_answer_block_wins(perm, noise):
    wrong = list(reversed(perm))
    text = f"<think>{noise}</think><answer>{format_answer(wrong)}</answer> later <answer>{format_answer(perm)}</answer>"
    assert parse_answer(text, len(perm)) == perm


@given(perm=permutations, guess=permutations)
def test_reward_parts(perm, guess):
    if len(guess) != len(perm):
        assert score_answer(format_answer(guess), perm) == Reward(0.0, 0.0, 0.0)
        return
    reward = score_answer(format_answer(guess), perm)
    right = sum(g == a for g, a in zip(guess, perm, strict=True))
    assert reward.accuracy == pytest.approx(right / len(perm))
    assert reward.exact == (1.0 if guess == perm else 0.0)
    assert reward.format == 0.5
    assert 0.5 <= reward.total <= 2.5


def test_reward_examples():
    assert score_answer("2 1 4 3", [2, 1, 4, 3]).total == 2.5
    assert score_answer("2 1 3 4", [2, 1, 4, 3]).total == pytest.approx(0.5 + 0.5)
    assert score_answer("1 1 1 1", [1, 2, 3, 4]).total == 0.0  # no partial credit for non-permutations
    assert score_answer("1 2 3", [1, 2, 3, 4]).total == 0.0
    assert score_answer("1 2 3 4 5", [1, 2, 3, 4]).total == 0.0
    assert score_answer("-1 2 3 4", [1, 2, 3, 4]).total == 0.0
    assert score_answer("", [2, 1]).total == 0.0
    assert score_answer(None, [2, 1]).total == 0.0
    think = "<think>top row swapped</think>\n<answer>2 1 4 3</answer>"
    assert score_answer(think, [2, 1, 4, 3], "think").total == 2.5
    assert score_answer("<answer>2 1 4 3</answer>", [2, 1, 4, 3], "think") == Reward(1.0, 1.0, 0.0)
    assert score_answer("2 1 4 3", [2, 1, 4, 3], "think") == Reward(1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>x</think><answer>1 2</answer>", True),
        ("  <think></think>\n <answer>1 2</answer>\n", True),
        ("<answer>1 2</answer><think>x</think>", False),
        ("<think>x</think>junk<answer>1 2</answer>", False),
        ("<think>x</think><answer>1 2</answer>tail", False),
        ("<think><think>x</think><answer>1 2</answer>", False),
        ("<think>x</think><answer>1 2", False),
    ],
)
def test_well_formed_think(text, ok):
    assert well_formed_think(text) is ok


@pytest.mark.parametrize(
    "text",
    [
        "7" * 1_000_000,
        "1 " * 500_000,
        "<answer>" * 200_000,
        "</answer>" * 200_000,
        "<answer>" * 100_000 + "</answer>" * 100_000,
        "<think>" * 100_000 + "</answer>",
        "\x00\xff" * 500_000,
    ],
)
def test_megabyte_inputs_stay_fast(text):
    start = time.perf_counter()
    for style in ("direct", "think"):
        assert score_answer(text, [2, 1, 4, 3], style).exact == 0.0
    assert time.perf_counter() - start < 2.0  # linear scans take milliseconds; a backtracking regex takes minutes


def test_prompts_and_targets():
    direct = make_prompt(2, 3, "direct")
    assert "2x3 grid" in direct and "1 2 3\n4 5 6" in direct and "6 numbers" in direct
    assert "<answer>" in make_prompt(3, 3, "think")
    assert make_target([2, 1], "direct") == "2 1"
    assert make_target([2, 1], "think", "swap") == "<think>swap</think><answer>2 1</answer>"
    assert make_target([2, 1], "think") == "<answer>2 1</answer>"  # answer-only SFT under the think prompt
    with pytest.raises(ValueError, match="prompt style"):
        make_prompt(2, 2, "chatty")


@given(st.permutations([1, 2, 3, 4]))
def test_teacher_explanations_are_right_and_well_formed(perm):
    """teacher_sft's explanation names, for each slot, the corner colour of the tile there and that tile's home;
    its target scores full marks under the think reward."""
    corners = ("black", "orange", "purple", "white")
    reasoning = teacher_reasoning(list(perm), 2, 2, corners)
    for slot, home in enumerate(perm, 1):
        assert f"Slot {slot} holds the {corners[home - 1]} corner" in reasoning and f": {home}." in reasoning
    target = make_target(list(perm), "think", reasoning)
    assert well_formed_think(target) and score_answer(target, list(perm), "think").total == 2.5
    assert "row 1, column 2: 2." in teacher_reasoning([2, 1, 3, 4, 5, 6, 7, 8, 9], 3, 3)  # no cue: rows and columns


# --- images and datasets ---------------------------------------------------------------------------------


@given(perm=st.sampled_from([(2, 2), (2, 3), (3, 3), (1, 4)]).flatmap(
    lambda g: st.tuples(st.just(g), st.permutations(list(range(1, g[0] * g[1] + 1))))))  # fmt: skip
@settings(max_examples=30, deadline=None)
def test_restore_inverts_shuffle(perm):
    (rows, cols), answer = perm
    side = 28 * rows * cols
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    shuffled = shuffle_image(image, answer, rows, cols)
    # Tile k of the shuffled image is the original tile at position answer[k].
    h, w = side // rows, side // cols
    k = 0
    o = answer[k] - 1
    assert np.array_equal(
        np.asarray(shuffled)[:h, :w],
        pixels[(o // cols) * h : (o // cols + 1) * h, (o % cols) * w : (o % cols + 1) * w],
    )
    assert np.array_equal(np.asarray(restore_image(shuffled, answer, rows, cols)), pixels)


def _pixels(path) -> bytes:
    return Image.open(path).convert("RGB").tobytes()


@pytest.mark.parametrize(
    "config",
    [
        PuzzleConfig(n_train=12, n_test=6, contact_sheet=2),
        PuzzleConfig(grid="3x3", source="bundled", n_train=10, n_test=5, contact_sheet=2),
        PuzzleConfig(grid="2x3", difficulty=0.7, n_train=8, n_test=4, contact_sheet=2),
    ],
    ids=["synthetic-2x2", "bundled-3x3", "synthetic-2x3-hard"],
)
def test_dataset_rebuilds_sources_and_keeps_splits_apart(config, tmp_path):
    dataset = generate_puzzles(config, tmp_path)
    manifest = dataset.manifest
    assert manifest["counts"] == {"train": config.n_train, "test": config.n_test}
    rows, cols = config.shape
    source_hashes = {}
    for split in ("train", "test"):
        records = dataset.records(split)
        assert len(records) == manifest["counts"][split]
        for record in records:
            assert set(record) == {
                "id",
                "image",
                "source_image",
                "grid",
                "answer",
                "prompt_direct",
                "prompt_think",
            }
            assert record["grid"] == [rows, cols]
            assert sorted(record["answer"]) == list(range(1, rows * cols + 1))
            assert record["answer"] != sorted(record["answer"])  # never the identity
            shuffled = dataset.image(record)
            assert shuffled.size == (config.side, config.side)
            restored = restore_image(shuffled, record["answer"], rows, cols)
            assert restored.tobytes() == _pixels(dataset.path / record["source_image"])
            source_hashes.setdefault(split, set()).add(hashlib.sha256(restored.tobytes()).hexdigest())
    assert not source_hashes["train"] & source_hashes["test"]
    assert Image.open(dataset.path / "contact_sheet.png").size[0] > 0


def test_bundled_photos_never_cross_splits():
    source = open_source(PuzzleConfig(source="bundled", n_train=4, n_test=2))
    assert source.pools["train"] and source.pools["test"]
    assert not set(source.pools["train"]) & set(source.pools["test"])


def test_same_config_same_bytes(tmp_path):
    config = PuzzleConfig(grid="3x3", source="bundled", n_train=6, n_test=3, seed=4)
    a = generate_puzzles(config, tmp_path / "a")
    b = generate_puzzles(config, tmp_path / "b")
    assert a.dataset_hash == b.dataset_hash == plan_dataset(config, tmp_path).dataset_hash
    assert a.manifest == b.manifest
    files_a = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    other = generate_puzzles(config.model_copy(update={"seed": 5}), tmp_path / "a")
    assert other.dataset_hash != a.dataset_hash


def test_images_saved_on_threads_are_the_files_save_writes_and_a_failure_is_raised(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(20)]
    with image_saver(pending=3) as save:
        for i, image in enumerate(images):
            save(image, tmp_path / f"{i}.png")
    images[0].save(tmp_path / "direct.png")
    assert (tmp_path / "0.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    assert all(
        np.array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), np.asarray(im)) for i, im in enumerate(images)
    )
    with pytest.raises(FileNotFoundError), image_saver() as save:
        save(images[0], tmp_path / "no such folder" / "x.png")


@pytest.mark.parametrize(
    ("cue", "homes"),
    [
        ("gradient", "dark red green yellow"),
        ("code_colours", "red green blue yellow"),
        ("new_colours", "black orange purple white"),
    ],
)
def test_synthetic_cue_colours_each_tile_by_its_home(cue, homes):
    """Each original quadrant's mean colour is nearest its own corner's: with code_colours, the tiny world's
    colour codes 1..4; with new_colours, colours the base can name that are none of its codes."""
    assert CORNER_NAMES["code_colours"] == CELL_COLOURS  # the codes the base learned
    new = ("black", "orange", "purple", "white")
    assert CORNER_NAMES["new_colours"] == new and not set(new) & set(CELL_COLOURS)
    assert CORNER_CUES["new_colours"] == tuple(COLOURS[c] for c in new)
    # The gradient's dark corner, the codes, and the cue's own corners
    references = {"dark": (16, 16, 128), **{c: COLOURS[c] for c in (*CELL_COLOURS, *homes.split()) if c in COLOURS}}
    image = synthetic_image(np.random.default_rng(0), 112, 0.0, cue)
    pixels = np.asarray(image, dtype=np.float32)
    for (x0, y0, x1, y1), name in zip(tile_boxes(112, 2, 2), homes.split(), strict=True):
        mean = pixels[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        nearest = min(references, key=lambda r: np.linalg.norm(mean - np.array(references[r])))
        assert nearest == name, (cue, name, mean)
    with pytest.raises(ValueError, match="cue"):
        synthetic_image(np.random.default_rng(0), 112, 0.0, "stripes")


def test_rerun_reuses_the_dataset(tmp_path):
    config = PuzzleConfig(n_train=4, n_test=2)
    first = generate_puzzles(config, tmp_path)
    stamp = (first.path / "train.jsonl").stat().st_mtime_ns
    second = generate_puzzles(config, tmp_path)
    assert second == first and (first.path / "train.jsonl").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "puzzles").iterdir() if p.name.startswith(".")]  # no temp dirs left


def _write_folder(root, n_good: int):
    rng = np.random.default_rng(1)
    (root / "a" / "b").mkdir(parents=True)
    for i in range(n_good):
        sub = root / ("a/b" if i % 2 else "a")
        Image.fromarray(rng.integers(0, 256, (90 + i, 130, 3), dtype=np.uint8)).save(sub / f"img{i}.png")
    return root


def test_folder_source_skips_and_counts_corrupt_files(tmp_path):
    folder = _write_folder(tmp_path / "images", 6)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "a" / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    config = PuzzleConfig(source="folder", folder=str(folder), n_train=8, n_test=4)
    dataset = generate_puzzles(config, tmp_path / "out")
    source = dataset.manifest["source"]
    assert source["kind"] == "folder"
    assert sorted(source["skipped"]) == ["a/empty.png", "broken.jpg"]
    assert source["ignored_non_image"] == 1
    assert dataset.manifest["counts"] == {"train": 8, "test": 4}


def test_folder_without_usable_images_is_a_clear_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("x.jpg", "y.png", "z.jpg"):
        (folder / name).write_bytes(b"junk")
    with pytest.raises(PuzzleError, match="no usable image"):
        generate_puzzles(PuzzleConfig(source="folder", folder=str(folder)), tmp_path / "out")
    with pytest.raises(PuzzleError, match="at least 2 image files"):
        generate_puzzles(PuzzleConfig(source="folder", folder=str(tmp_path / "out")), tmp_path / "out2")
    assert not (tmp_path / "out" / "puzzles").exists() or not any((tmp_path / "out" / "puzzles").iterdir())


def test_manifest_is_json_without_timestamps(tmp_path):
    dataset = generate_puzzles(PuzzleConfig(n_train=2, n_test=2), tmp_path)
    text = (dataset.path / "manifest.json").read_text()
    assert json.loads(text)["dataset_hash"] == dataset.dataset_hash
    assert "time" not in text


def test_a_second_maker_of_one_product_waits_for_the_first_and_finds_it_made(tmp_path):
    """one_maker: what lets seeds side by side make their common puzzles and base evaluation once."""
    product, said = tmp_path / "product", []

    def make(name: str) -> None:
        with one_maker(product):
            if product.exists():
                said.append(f"{name} found it")
                return
            time.sleep(0.3)
            product.mkdir()
            said.append(f"{name} made it")

    first = threading.Thread(target=make, args=("first",))
    first.start()
    time.sleep(0.05)
    make("second")
    first.join()
    assert said == ["first made it", "second found it"]
    assert list(tmp_path.iterdir()) == [product]  # no lock file among the products


def test_a_maker_that_will_not_wait_is_told_at_once_that_another_is_making_it(tmp_path):
    """one_maker(wait=False): what lets an evaluation helper pass over a model the stage is evaluating."""
    product, holding, release = tmp_path / "product", threading.Event(), threading.Event()

    def hold() -> None:
        with one_maker(product) as mine:
            assert mine
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    started = time.perf_counter()
    with one_maker(product, wait=False) as mine:
        assert mine is False
    assert time.perf_counter() - started < 1
    release.set()
    holder.join()
    with one_maker(product, wait=False) as mine:
        assert mine is True


def test_a_damaged_stored_image_is_named_with_the_folder_to_delete(tmp_path):
    from forgetting.image_files import decode_rgb
    from forgetting.storage import DamagedFile

    images = tmp_path / "puzzles" / "0123456789abcdef" / "images"
    images.mkdir(parents=True)
    path = images / "test-000000.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    assert np.array_equal(np.asarray(decode_rgb(path)), pixels)
    for damage in (lambda: path.write_bytes(path.read_bytes()[:100]), lambda: path.write_bytes(b"not an image")):
        damage()
        with pytest.raises(DamagedFile, match=f"{path} cannot be read as an image") as err:
            decode_rgb(path)
        assert str(err.value).endswith(f"; delete {images.parent.resolve()} and run again to have it made anew")
