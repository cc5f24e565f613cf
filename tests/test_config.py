"""Bad profiles are rejected before any job runs, with the key and what is allowed."""

import re

import pytest
import yaml

from workspace import make_workspace, snakemake


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("ws"))


def profile_with(workspace, change):
    config = yaml.safe_load((workspace / "params" / "ci.yaml").read_text())
    change(config)
    path = workspace / "params" / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return snakemake(workspace, "-n", "--configfile=params/bad.yaml", "results/table1.csv")


def test_ci_profile_is_valid(workspace):
    result = snakemake(workspace, "-n", "--configfile=params/ci.yaml", "results/table1.csv")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.update(epochs=3), r"Additional properties are not allowed \('epochs' was unexpected\)"),
    (lambda c: c["coco"]["train"].update(lr="fast"), r"'fast' is not of type 'number'[\s\S]*lr"),
    (lambda c: c["coco"]["train"].update(steps=0), r"0 is less than the minimum of 1[\s\S]*steps"),
    (lambda c: c.update(modes=["frozen", "linear-probe"]), r"'linear-probe' is not one of \['frozen', 'finetune'\]"),
    (lambda c: c.update(backbones=["swin-z"]), r"backbones\[0\]: unknown backbone 'swin-z'.*tiny-swin-none"),
    (lambda c: c["datasets"]["coco"].update(source="existing", root="/nonexistent/coco"),
     r"datasets.coco.root: /nonexistent/coco does not exist"),
    (lambda c: c["table2"].update(backbone="swin-z"), r"table2.backbone: unknown backbone 'swin-z'"),
    (lambda c: c["table3"].update(backbones=["tiny-swin-none", "swin-z"]),
     r"table3.backbones\[1\]: unknown backbone 'swin-z'"),
    (lambda c: c["table2"]["rungs"]["coco"][1]["head"].update(fpn_layers=3),
     r"table2.rungs.coco\[heavy\].head: unknown key\(s\) \['fpn_layers'\]; coco.head has: .*fpn_repeats"),
    (lambda c: c["table2"]["rungs"]["k400"][0]["head"].update(depth="deep"),
     r"table2.rungs.k400\[depth0\].head.depth: 'deep' is not of type 'integer'"),
    (lambda c: c["table2"]["rungs"]["k400"].append({"name": "depth0", "head": {}}),
     r"table2.rungs.k400: rung names must differ"),
    (lambda c: c.update(tasks=["coco", "k400"]), r"table2.rungs.ade20k: 'ade20k' is not in tasks"),
    (lambda c: c["k400"]["resources"].update(nodes=0), r"0 is less than the minimum of 1[\s\S]*nodes"),
    (lambda c: c["k400"]["resources"].update(nodes=3),  # batch_size 4 over 3 processes
     r"k400.train.batch_size 4 is the batch of a step over all processes and does not divide between the job's "
     r"3 \(3 node\(s\) x 1\): make it a multiple of 3, or change k400.resources"),
])
def test_bad_profile_is_rejected_before_any_job(workspace, change, expected):
    result = profile_with(workspace, change)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert re.search(expected, output), output[-3000:]
    assert not (workspace / "data").exists() and not (workspace / "checkpoints").exists()


def test_every_config_dataclass_takes_its_defaults_from_the_schema():
    """The schema is the one place of defaults: each head and training key has one there, and the
    dataclasses have none of their own (a key left out of a section is the schema's value)."""
    import dataclasses

    from frozenrep.config import config_from, schema_defaults
    from frozenrep.heads.ade20k import SegmentationHeadConfig
    from frozenrep.heads.coco import DetectionHeadConfig
    from frozenrep.heads.k400 import VideoHeadConfig
    from frozenrep.training import TrainConfig

    for cls, section in ((DetectionHeadConfig, "coco.head"), (SegmentationHeadConfig, "ade20k.head"),
                         (VideoHeadConfig, "k400.head"), (TrainConfig, "k400.train")):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(schema_defaults(section)) == set(fields), section
        assert all(f.default is dataclasses.MISSING for f in fields.values()), f"{cls.__name__} has own defaults"
    head = config_from(VideoHeadConfig, {"depth": 3}, "k400.head")
    assert head.depth == 3 and head.num_frames == schema_defaults("k400.head")["num_frames"]
    with pytest.raises(KeyError, match=r"k400.head: unknown key\(s\) \['frames'\]"):
        config_from(VideoHeadConfig, {"frames": 8}, "k400.head")


def test_job_spec_is_built_once_and_travels_as_json():
    from frozenrep.checkpoints import load_registry
    from frozenrep.config import JobSpec, job_spec
    from workspace import REPO, resolved_profile

    config = resolved_profile()
    registry = load_registry(REPO / "params" / "checkpoints.yaml")
    spec = job_spec(config, registry, "coco", "tiny-swin-none", "frozen", "0", rung="heavy", table="table2")
    assert spec.seed == 0 and spec.entry == registry["tiny-swin-none"] and spec.rung == "heavy"
    assert spec.task_config["head"] == {**config["coco"]["head"], **next(
        r["head"] for r in config["table2"]["rungs"]["coco"] if r["name"] == "heavy")}
    assert "resources" not in spec.task_config
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    # the tracking store does not change what a job computes; the head settings do
    moved = job_spec(config, registry, "coco", "tiny-swin-none", "frozen", 0, rung="heavy", table="table2",
                     tracking={"uri": "sqlite:///elsewhere.db"})
    assert moved.fingerprint("abc") == spec.fingerprint("abc")
    assert job_spec(config, registry, "coco", "tiny-swin-none", "frozen", 0).fingerprint("abc") != spec.fingerprint("abc")


def test_finetune_steps_set_the_fine_tuned_jobs_budget_and_leave_every_other_spec_as_it_was():
    from frozenrep.checkpoints import load_registry
    from frozenrep.config import job_spec
    from workspace import REPO, resolved_profile

    config = resolved_profile()
    registry = load_registry(REPO / "params" / "checkpoints.yaml")
    longer = dict(config, coco={**config["coco"], "finetune_steps": config["coco"]["train"]["steps"] + 7})

    def spec(profile, mode):
        return job_spec(profile, registry, "coco", "tiny-swin-none", mode, 0)

    assert spec(longer, "finetune").task_config["train"]["steps"] == config["coco"]["train"]["steps"] + 7
    assert spec(longer, "frozen").to_json() == spec(config, "frozen").to_json()  # frozen jobs do not rerun
    assert spec(config, "finetune").task_config["train"]["steps"] == config["coco"]["train"]["steps"]
    assert "finetune_steps" not in spec(longer, "finetune").task_config
