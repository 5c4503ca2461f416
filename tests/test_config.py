import json
import re
import subprocess
import sys

import pytest

from flows.preflight import check_inputs
from forgetting.config import PROFILES_DIR, REPO_ROOT, ConfigError, PuzzleConfig, StudyConfig
from forgetting.profiles import load_config


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_profile_loads(profile):
    config = load_config(profile)
    assert config.name == profile
    rows, cols = config.puzzles.shape
    assert config.puzzles.side % (28 * rows) == 0 and config.puzzles.side % (28 * cols) == 0


def test_overrides_are_read_as_yaml(tmp_path):
    config = load_config(
        "micro",
        [
            "puzzles.grid=3x3",
            "puzzles.difficulty=0.25",
            "evaluation.benchmarks=[a, b]",
            "arms.sft.enabled=false",
        ],
        output_dir=str(tmp_path),
    )
    assert config.puzzles.shape == (3, 3)
    assert config.puzzles.side == 168  # smallest multiple of 84 that is >= 112
    assert config.puzzles.difficulty == 0.25
    assert config.evaluation.benchmarks == ["a", "b"]
    assert config.arms.sft.enabled is False
    assert config.output.path == tmp_path.resolve()


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("puzzles.grid=7x7", "puzzles.grid"),
        ("puzzles.grid=1x1", "puzzles"),
        ("puzzles.grid=three", "puzzles.grid"),
        ("puzzles.image_size=100", "puzzles"),
        ("puzzles.n_train=0", "puzzles.n_train"),
        ("puzzles.difficulty=1.5", "puzzles.difficulty"),
        ("puzzles.source=web", "puzzles.source"),
        ("puzzles.cue=stripes", "puzzles.cue"),
        ("puzzles.colour=red", "puzzles.colour"),
        ("nonsense=1", "nonsense"),
        ("arms.rft.batch_size=10", "arms.rft"),
        ("arms.sft.learning_rate=-1", "arms.sft.learning_rate"),
        ("arms.checkpoint_steps=[0,5]", "arms.checkpoint_steps"),
        ("seed_processes=0", "seed_processes"),
        ("arms.iterative_sft={enabled: true, steps: 10, rounds: 4}", "arms.iterative_sft"),
        ("arms={iterative_sft: {enabled: true}, num_processes: 2}", "arms"),
        ("arms.iterative_sft={enabled: true, samples_per_puzzle: 2, answers_per_puzzle: 2}", "arms"),
        ("arms.iterative_sft.answers_per_puzzle=0", "arms.iterative_sft.answers_per_puzzle"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config("micro", [override])
    assert f"{field}:" in str(err.value)


def test_a_profile_extends_another_section_by_section(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: micro\nname: child\narms:\n  sft: {steps: 7}\n")
    config, parent = load_config(str(child)), load_config("micro")
    assert config.name == "child" and config.arms.sft.steps == 7
    assert config.arms.sft.learning_rate == parent.arms.sft.learning_rate  # a key the child leaves out is kept
    assert config.arms.rft == parent.arms.rft and config.puzzles == parent.puzzles
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text(f"extends: {child}\nname: grandchild\narms: {{sft: {{learning_rate: 1.0e-3}}}}\n")
    config = load_config(str(grandchild))
    assert (config.arms.sft.steps, config.arms.sft.learning_rate) == (7, 1e-3)


def test_a_profile_that_extends_itself_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\nname: a\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\nname: b\n")
    with pytest.raises(ConfigError, match="extends itself .*a -> b -> a"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: [micro, tiny]\nname: c\n")
    with pytest.raises(ConfigError, match="extends names one profile"):
        load_config(str(tmp_path / "c.yaml"))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*micro.*tiny"):
        load_config("nope")


def test_folder_source_needs_an_existing_folder(tmp_path):
    with pytest.raises(ConfigError, match="puzzles"):
        load_config("micro", ["puzzles.source=folder"])
    config = load_config("micro", ["puzzles.source=folder", f"puzzles.folder={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="puzzles.folder: .*missing is not a directory"):
        check_inputs(config)


def test_an_output_folder_that_cannot_be_written_is_named_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("")
    for folder, reason in ((tmp_path / "a-file" / "runs", "Not a directory"), (tmp_path / "a-file", "File exists")):
        with pytest.raises(
            ConfigError, match=re.escape(f"output.dir: {folder} is not a folder this run can write to ({reason}")
        ):
            check_inputs(load_config("micro", output_dir=str(folder)), base_model=False, benchmarks=False)
    fresh = tmp_path / "new" / "runs"
    check_inputs(load_config("micro", output_dir=str(fresh)), base_model=False, benchmarks=False)
    assert fresh.is_dir() and not any(fresh.iterdir())  # made, and the probe file gone


def test_study_id_ignores_where_results_go(tmp_path):
    a = load_config("micro", output_dir=str(tmp_path / "a"))
    b = load_config("micro", output_dir=str(tmp_path / "b"))
    c = load_config("micro", ["puzzles.seed=1"], output_dir=str(tmp_path / "a"))
    assert a.study_id == b.study_id != c.study_id
    assert load_config("micro", ["seed_processes=2"]).study_id == a.study_id  # where seeds run is no result
    with pytest.raises(ConfigError, match="seed_processes > 1 needs arms.num_processes 1"):
        load_config("micro", ["seed_processes=2", "arms.num_processes=2"])
    assert a.study_id.startswith("micro-")


def test_puzzle_cue_at_its_default_leaves_ids_as_they_were():
    """puzzles.cue came after studies were published under their ids: at its default it is left out of the
    dumps the ids hash (and loads back as the default); set, it names a different study."""
    config = load_config("micro")
    assert "cue" not in config.model_dump(mode="json")["puzzles"]
    assert StudyConfig.model_validate(config.model_dump(mode="json")) == config
    other = load_config("micro", ["puzzles.cue=code_colours"])
    assert other.model_dump(mode="json")["puzzles"]["cue"] == "code_colours"
    assert other.study_id != config.study_id


@pytest.mark.parametrize("folder", sorted(p.name for p in (REPO_ROOT / "docs").glob("results*") if p.is_dir()))
def test_a_published_config_keeps_its_id(folder):
    """Every published study's and sweep's config loads to the id its report names: a setting added since (an
    arm, a field at its default) leaves published ids as they were, so a rerun finds its outputs."""
    from forgetting.sweep import sweep_id

    published = REPO_ROOT / "docs" / folder
    summary = json.loads((published / "summary.json").read_text())
    config = load_config(str(published / "config.yaml"))
    if "sweep_id" in summary:
        assert sweep_id(config) == summary["sweep_id"]
    else:
        assert config.study_id == summary["study_id"]


def test_config_renders_as_a_form_schema():
    """The Prefect UI builds its form from this JSON schema: every field is described."""
    schema = StudyConfig.model_json_schema()
    for name, definition in schema["$defs"].items():
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    assert PuzzleConfig().side == 112


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "puzzles.grid=7x7"], "puzzles.grid"),
        (["--set", "puzzles.gird=3x3"], "puzzles.gird: unknown key (did you mean grid?)"),
        (["--profile", "nope"], "no such profile"),
        (["--set", "puzzles.source=folder", "--set", "puzzles.folder=/does/not/exist"], "puzzles.folder"),
    ],
)
def test_cli_rejects_bad_config_with_exit_code_2(args, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.puzzles", "--profile", "micro", *args, "--output-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "puzzles").exists()  # failed before any work


def test_an_unknown_key_is_named_with_what_it_may_have_meant():
    """A misspelt key gets the section's close keys, one nothing resembles the keys its section has; a key under a
    plain value (not a section) is the value's error."""
    for assignment, message in (
        ("arms.rft.temprature=1", "arms.rft.temprature: unknown key (did you mean temperature?)"),
        ("arms.sft.lr=1", "arms.sft.lr: unknown key (this section has enabled, steps, learning_rate,"),
        ("bogus=1", "bogus: unknown key (this section has name, seed, seeds,"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config("micro", [assignment])
        assert message in str(err.value)


def test_gpu_only_settings_fail_fast_on_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="arms.rft.use_vllm: .*need a GPU"):
        check_inputs(load_config("micro", ["arms.rft.use_vllm=true"]))
    with pytest.raises(ConfigError, match="arms.deepspeed: .* is not a file"):
        check_inputs(load_config("micro", [f"arms.deepspeed={tmp_path / 'ds.json'}"]))


def test_a_sweep_is_every_combination_and_a_bad_point_is_named():
    from forgetting.sweep import arm_key, family, points

    studies = points(load_config("tiny-sweep"))
    assert len(studies) == 3 * 2 + 3 and all(not one.sweep.grid for _, _, one in studies)
    sft = {(family(one, "sft"), arm_key(one, "sft")) for _, _, one in studies}
    rft = {arm_key(one, "rft") for _, _, one in studies if one.arms.rft.enabled}
    assert len(sft) == 4 and ("sft-lora" in {f for f, _ in sft}) and len(rft) == 3  # two lrs, and beta 0
    rollout = {arm_key(one, "rollout_sft") for _, _, one in studies if one.arms.rollout_sft.enabled}
    assert len(rollout) == 4  # one per RFT setting at lr 5e-4, and one at lr 3e-5
    think = points(load_config("tiny-think-sweep"))  # the three SFT arms at one rate a point, then RFT's rates
    sft_arms = ("sft", "teacher_sft", "rollout_sft")
    rates = [{getattr(one.arms, arm).learning_rate for arm in sft_arms} for _, _, one in think[:3]]
    assert rates == [{3e-4}, {1e-4}, {3e-5}]
    assert [one.arms.rft.learning_rate for _, _, one in think] == [1e-4, 1e-4, 1e-4, 2e-4, 5e-5]
    assert [len({arm_key(one, arm) for _, _, one in think}) for arm in (*sft_arms, "rft")] == [3, 3, 5, 3]
    dense = points(load_config("tiny-think-dense"))  # SFT once, RFT at two rates, a checkpoint every 10 steps
    assert [one.arms.rft.learning_rate for _, _, one in dense] == [1e-4, 5e-5]
    assert len({arm_key(one, "sft") for _, _, one in dense}) == 1 and dense[0][2].arms.sft.learning_rate == 3e-5
    assert dense[0][2].arms.rft_checkpoint_steps() == [5, *range(10, 200, 10)]
    assert dense[0][2].evaluation.every == 10 and not dense[0][2].arms.rollout_sft.enabled
    direct = points(load_config("tiny-dense"))  # the direct sweep's frontier settings, checkpoints every 5 to 50
    assert [(one.arms.rft.learning_rate, one.arms.rft.beta) for _, _, one in direct] == [
        (1e-4, 0.04),
        (3e-5, 0.04),
        (1e-4, 0.0),
    ]
    assert len({arm_key(one, "sft") for _, _, one in direct}) == 1 and direct[0][2].arms.sft.learning_rate == 3e-5
    assert direct[0][2].arms.rft_checkpoint_steps() == [*range(5, 50, 5), *range(50, 200, 10)]
    early = points(load_config("tiny-think-early"))  # rollout-SFT on three RFT models' samples, one RFT arm
    assert [family(one, "rollout_sft") for _, _, one in early] == [
        "rollout_sft",
        "rollout_sft-early5",
        "rollout_sft-early20",
        "rollout_sft-early5",  # 600 steps on the same samples: the same family
        "rollout_sft-early5",  # eight samples a puzzle of the same checkpoint: the same family
    ]
    assert len({arm_key(one, "rft") for _, _, one in early}) == 1 and not early[0][2].arms.sft.enabled
    assert family(load_config("paper-3b"), "rollout_sft") == "rollout_sft-training-lora"  # its LoRA arms
    with pytest.raises(ConfigError, match=r"sweep point 1 .*arms.sft.learning_rate"):
        points(load_config("micro", ["sweep.grid={arms.sft.learning_rate: [0.001, -1]}"]))


def test_an_iterative_arm_is_keyed_by_the_rft_settings_it_samples_with():
    """iterative_sft draws its rounds' samples at RFT's temperature and max_new_tokens (and RFT's group size when
    it sets no samples_per_puzzle of its own): a change to those is another iterative arm; RFT's length is not.
    With a temperature of its own, RFT's is no longer read; unset, the arm's id is the one it always had."""
    from forgetting.sweep import arm_key, points

    def key(*changes: str) -> str:
        return arm_key(load_config("tiny-think-iterative-capped", list(changes)), "iterative_sft")

    assert key("arms.rft.steps=600") == key("arms.rft.learning_rate=3e-5") == key()
    assert len({key(), key("arms.rft.temperature=1.0"), key("arms.rft.max_new_tokens=64")}) == 3
    assert key("arms.rft.num_generations=16") == key()  # four samples a puzzle of its own
    own = "arms.iterative_sft.samples_per_puzzle=null"
    assert key(own, "arms.rft.num_generations=16") != key(own) != key()
    cool = "arms.iterative_sft.temperature=1.0"
    assert key(cool, "arms.rft.temperature=1.6") == key(cool) != key()
    config = load_config("tiny-think-iterative-capped", [cool])
    assert config.arms.iterative_sampling() == {"samples": 4, "temperature": 1.0, "max_new_tokens": 48}
    assert "temperature" not in load_config("tiny-think-iterative-capped").arms.iterative_sft.model_dump()
    long = points(load_config("tiny-think-rft-long"))  # RFT at 200 and 600 steps, the one capped arm beside both
    assert [one.arms.rft.steps for _, _, one in long] == [200, 600]
    assert len({arm_key(one, "iterative_sft") for _, _, one in long}) == 1


def test_a_scheduled_run_adds_seeds_to_those_the_output_folder_holds(tmp_path):
    """schedule.add_seeds: the study over its own seeds, every seed already reported, and the next new ones."""
    from forgetting.profiles import with_next_seeds

    config = load_config("micro", ["seed=0"], str(tmp_path))
    assert with_next_seeds(config, 1).seeds == [0, 1]
    for seed in (1, 3):  # one-seed reports left by earlier runs
        report = config.model_copy(update={"seed": seed}).report_dir
        report.mkdir(parents=True)
        (report / "summary.json").write_text("{}")
    assert with_next_seeds(config, 1).seeds == [0, 1, 2, 3]
    assert with_next_seeds(config, 2).seeds == [0, 1, 2, 3, 4]
    assert with_next_seeds(load_config("micro", ["seeds=[5,6]"], str(tmp_path)), 1).seeds == [0, 1, 3, 5, 6]
    with pytest.raises(ConfigError, match="would have 17 seeds"):
        with_next_seeds(config, 14)


def test_the_form_marks_what_a_run_needs():
    """The study deployment's parameter schema, as the Prefect server checks it: every profile's parameters (a
    whole config) pass; fields a config always carries are required (no "(Optional)" in the form), empty-able
    ones are not; a partial config, which Prefect would not merge with the profile, fails naming what is missing."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import ValidationError, validate

    from deployments.serve import parameters
    from flows.study import study

    schema = parameter_schema(study).model_dump_for_openapi()
    for profile in ("micro", "tiny", "tiny-think", "tiny-think-brief", "tiny-think-brief-long", "paper-3b"):
        validate(parameters(load_config(profile)), schema, raise_on_error=True)
    defs = schema["definitions"]
    assert {"learning_rate", "steps", "prompt_style"} <= set(defs["SFTArmConfig"]["required"])
    assert "cron" not in defs["ScheduleConfig"]["required"]  # empty: no schedule
    assert "early_step" not in defs["RolloutSFTArmConfig"]["required"]  # left out of dumps at its default
    assert "teacher_sft" not in defs["ArmsConfig"]["required"]
    partial = {"config": {"arms": {"sft": {"learning_rate": 1e-4}}}}
    with pytest.raises(ValidationError, match="'name' is a required property"):
        validate(partial, schema, raise_on_error=True)


def test_form_descriptions_render_as_written():
    """The Prefect form renders field descriptions as markdown: an angle bracket outside a code span would be
    read as an HTML tag and vanish (`<think>`)."""
    import re

    def descriptions(node):
        if isinstance(node, dict):
            if isinstance(node.get("description"), str):
                yield node["description"]
            for value in node.values():
                yield from descriptions(value)
        elif isinstance(node, list):
            for value in node:
                yield from descriptions(value)

    found = list(descriptions(StudyConfig.model_json_schema()))
    assert len(found) > 50
    assert "Items generated per batch. (1 <= x <= 4096)" in found  # the bounds the form checks, shown
    bare = [d for d in found if re.search(r"<[A-Za-z/!?]", re.sub(r"`[^`]*`", "", d))]  # a tag, not "1 <= x"
    assert not bare, bare
