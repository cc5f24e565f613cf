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
])
def test_bad_profile_is_rejected_before_any_job(workspace, change, expected):
    result = profile_with(workspace, change)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert re.search(expected, output), output[-3000:]
    assert not (workspace / "data").exists() and not (workspace / "checkpoints").exists()
