"""Checkpoints: official Swin key format over loopback HTTP, conversion, strict loading, refusals."""

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import replace

import pytest
import timm
import torch
from safetensors.torch import save, save_file

from conftest import REPO

from frozenrep.backbones import build_backbone
from frozenrep.checkpoints import (
    CheckpointEntry,
    CheckpointError,
    fetch_checkpoint,
    load_into_model,
    load_registry,
    pin_sha256,
    read_state_dict,
)
from frozenrep.local_backbones import create_local_backbone

ARCH = "swin_base_patch4_window7_224"


def official_swin_state(model: torch.nn.Module) -> dict:
    """A timm Swin's weights in Microsoft's release format: {'model': ...}, their key names, their buffers."""
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
    for name, module in model.named_modules():
        if getattr(module, "relative_position_index", None) is not None:
            out[f"{name}.relative_position_index"] = module.relative_position_index
        if getattr(module, "attn_mask", None) is not None:
            out[f"{name}.attn_mask"] = module.attn_mask
    return {"model": out}


@pytest.fixture(scope="module")
def swin_base_official():
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    buffer = io.BytesIO()
    torch.save(official_swin_state(model), buffer)
    return model, buffer.getvalue()


def test_official_swin_b_download_resume_convert_and_strict_load(swin_base_official, http_server, tmp_path):
    model, payload = swin_base_official
    assert "layers.0.downsample.reduction.weight" in torch.load(io.BytesIO(payload), weights_only=True)["model"]
    url = http_server.add("/swin_base_patch4_window7_224.pth", payload, cut_after=40_000_000, cut_times=1)
    entry = CheckpointEntry(name="swin-b-in1k", source=url, format="official-swin", arch=ARCH,
                            pretraining="supervised-in1k", sha256=hashlib.sha256(payload).hexdigest())
    dest = tmp_path / "swin-b-in1k.pth"
    fetch_checkpoint(entry, dest, backoff=0.01)
    assert http_server.routes["/swin_base_patch4_window7_224.pth"].requests[1].startswith("bytes=")
    assert (tmp_path / "swin-b-in1k.pth.sha256").read_text().split()[0] == entry.sha256

    loaded = load_into_model(entry, dest)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    backbone = build_backbone(entry, dest, mode="frozen")
    assert backbone.channels == [128, 256, 512, 1024] and backbone.strides == [4, 8, 16, 32]
    feats = backbone(torch.randn(1, 3, 224, 288))
    assert [tuple(f.shape) for f in feats.values()] == [(1, 128, 56, 72), (1, 256, 28, 36), (1, 512, 14, 18),
                                                        (1, 1024, 7, 9)]


def hub_cache(root, repo: str, payload: bytes, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face hub cache holding ``repo``'s model.safetensors, in huggingface_hub's layout
    (blobs named by their sha256, snapshots linking to them, refs/main naming the commit)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(payload).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(payload)
    snapshot = folder / "snapshots" / commit / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(f"../../blobs/{blob.name}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return root


def test_timm_hub_source_comes_through_huggingface_hubs_client_and_cache(tmp_path, registry):
    """`frozenrep-checkpoint fetch` of a timm: entry, offline, from a populated hub cache: the file
    huggingface_hub resolves is verified, copied, and loads strictly into the entry's architecture."""
    import subprocess
    import sys

    entry = replace(registry["vit-b16-mae"], arch_kwargs=dict(embed_dim=32, depth=2, num_heads=2))
    model = timm.create_model(entry.arch, num_classes=0, **entry.arch_kwargs)
    payload = save(dict(model.state_dict()))
    cache = hub_cache(tmp_path / "hub", "timm/vit_base_patch16_224.mae", payload)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    dest = tmp_path / "vit-b16-mae.safetensors"
    cli = [sys.executable, "-m", "frozenrep.cli.checkpoint", "fetch", "vit-b16-mae", "--dest", str(dest)]
    done = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == payload and "no pinned sha256" in done.stderr
    assert (tmp_path / "vit-b16-mae.safetensors.sha256").read_text().split()[0] == hashlib.sha256(payload).hexdigest()
    loaded = load_into_model(entry, dest)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())

    empty = {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}
    refused = subprocess.run(cli, capture_output=True, text=True, env=empty, cwd=REPO)
    assert refused.returncode != 0
    assert "registry entry vit-b16-mae: timm/vit_base_patch16_224.mae/model.safetensors is not in the Hugging Face " \
           "cache" in refused.stderr


def test_official_dinov2_release_with_registers_is_converted_by_timm_and_loads_strictly(http_server, tmp_path,
                                                                                       registry):
    """Meta's DINOv2 layout (class token's position inside pos_embed, register_tokens, mask_token) over
    HTTP, converted by timm's filter into the register model: the weights are the same network's."""
    entry = replace(registry["tiny-dinov2-none"], source=f"{http_server.base}/dinov2_reg4_pretrain.pth",
                    format="official", create=None)
    torch.manual_seed(0)
    model = timm.create_model(entry.arch, num_classes=0, **entry.arch_kwargs)
    timm_state = model.state_dict()
    class_position = torch.randn(1, 1, timm_state["pos_embed"].shape[-1])
    official = {k: v for k, v in timm_state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official.update(register_tokens=timm_state["reg_token"], cls_token=timm_state["cls_token"] - class_position,
                    pos_embed=torch.cat([class_position, timm_state["pos_embed"]], 1),
                    mask_token=torch.zeros(1, timm_state["pos_embed"].shape[-1]))
    buffer = io.BytesIO()
    torch.save(official, buffer)
    http_server.add("/dinov2_reg4_pretrain.pth", buffer.getvalue())
    dest = tmp_path / "dinov2.pth"
    fetch_checkpoint(entry, dest)
    loaded = load_into_model(entry, dest).state_dict()
    assert loaded.keys() == timm_state.keys()
    assert all(torch.allclose(loaded[k], timm_state[k], atol=1e-6) for k in timm_state)
    feats = build_backbone(entry, dest)(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats.values()] == [(1, 32, 4, 4)]


def test_local_backbone_is_deterministic_and_loads(tmp_path, tiny_entry):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert create_local_backbone(tiny_entry, a) == create_local_backbone(tiny_entry, b)
    params = sum(p.numel() for p in load_into_model(tiny_entry, a).parameters())
    assert 100_000 < params < 1_000_000  # "a few hundred thousand parameters"


def test_architecture_mismatch_lists_missing_and_unexpected_keys(tmp_path, tiny_entry):
    path = tmp_path / "tiny.safetensors"
    create_local_backbone(tiny_entry, path)
    shallower = replace(tiny_entry, arch_kwargs={**tiny_entry.arch_kwargs, "depths": [1, 1, 1, 1]})
    with pytest.raises(CheckpointError) as info:
        load_into_model(shallower, path)
    message = str(info.value)
    assert "unexpected keys: layers.2.blocks.1." in message and "missing keys: none" in message


def test_shape_mismatch_is_a_checkpoint_error(tmp_path, tiny_entry):
    path = tmp_path / "tiny.safetensors"
    create_local_backbone(tiny_entry, path)
    wider = replace(tiny_entry, arch_kwargs={**tiny_entry.arch_kwargs, "embed_dim": 32})
    # the same tensor names, other shapes: the error names the tensor and both shapes
    with pytest.raises(CheckpointError, match=r"does not fit[\s\S]*patch_embed\.proj\.weight[\s\S]*"
                                              r"torch\.Size\(\[16, 3, 4, 4\]\)[\s\S]*torch\.Size\(\[32, 3, 4, 4\]\)"):
        load_into_model(wider, path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_checkpoint_is_refused(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    state = {"a": torch.randn(1000), "b": torch.randn(1000)}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(path)


def safetensors_with_header(path, header: bytes, body: bytes = b"") -> None:
    """A safetensors file by hand: 8-byte little-endian header length, the JSON header, the data."""
    path.write_bytes(len(header).to_bytes(8, "little") + header + body)


def test_safetensors_with_a_corrupt_header_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors_with_header(path, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"w\.safetensors is truncated or corrupt"):
        read_state_dict(path)


def test_a_huge_declared_tensor_is_refused_without_allocating_it(tmp_path):
    """A header that declares a 4 TiB tensor over a file of 8 bytes: refused by the offsets check,
    before any memory is asked for (the test would fail with MemoryError, or hang, otherwise)."""
    import resource

    path = tmp_path / "w.safetensors"
    huge = 1 << 40
    safetensors_with_header(path, json.dumps({"a": {"dtype": "F32", "shape": [huge],
                                                    "data_offsets": [0, 4 * huge]}}).encode(), b"\0" * 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing near 4 TiB


@pytest.fixture
def params_dir(tmp_path):
    """A params/ folder with the registry schema beside it (the registry is validated against it)."""
    from conftest import REPO

    (tmp_path / "schemas").mkdir()
    shutil.copy(REPO / "params/schemas/checkpoints.schema.yaml", tmp_path / "schemas")
    return tmp_path


def test_registry_validation_names_entry_and_key(params_dir):
    bad = params_dir / "checkpoints.yaml"
    bad.write_text("x:\n  source: ftp://a/b\n  format: pickle\n  arch: swin_tiny_patch4_window7_224\n"
                   "  pretraining: none\n")
    with pytest.raises(CheckpointError) as info:
        load_registry(bad)
    assert "x.format" in str(info.value) and "x.source" in str(info.value)


def test_pin_writes_hash_into_registry_and_keeps_comments(params_dir):
    from conftest import REPO

    registry = params_dir / "checkpoints.yaml"
    shutil.copy(REPO / "params/checkpoints.yaml", registry)
    digest = "ab" * 32
    pin_sha256(registry, "swin-b-in22k", digest)
    text = registry.read_text()
    assert text.count(digest) == 1 and "# --- Paper backbones" in text
    entries = load_registry(registry)
    assert entries["swin-b-in22k"].sha256 == digest and entries["swin-b-in1k"].sha256 is None


def simmim_official_state(model: torch.nn.Module) -> dict:
    """A SimMIM pretraining checkpoint as Microsoft releases it: the official-format backbone under
    ``encoder.`` (with its mask token) beside the one-layer pixel decoder."""
    backbone = official_swin_state(model)["model"]
    state = {f"encoder.{k}": v for k, v in backbone.items()}
    state["encoder.mask_token"] = torch.zeros(1, 1, model.embed_dim)
    state["decoder.0.weight"] = torch.randn(32 * 32 * 3, model.num_features, 1, 1)
    state["decoder.0.bias"] = torch.zeros(32 * 32 * 3)
    return {"model": state}


def test_swinv2_b_simmim_download_keeps_the_encoder_only(http_server, tmp_path):
    registry = load_registry("params/checkpoints.yaml")
    torch.manual_seed(0)
    model = timm.create_model(registry["swinv2-b-simmim"].arch, pretrained=False, num_classes=0)
    buffer = io.BytesIO()
    torch.save(simmim_official_state(model), buffer)
    url = http_server.add("/simmim_swinv2_pretrain_models/swinv2_base_1k_500k.pth", buffer.getvalue())
    entry = replace(registry["swinv2-b-simmim"], source=url)
    dest = tmp_path / "swinv2-b-simmim.pth"
    fetch_checkpoint(entry, dest, backoff=0.01)
    loaded = load_into_model(entry, dest)  # strict: no decoder, no mask token, nothing missing
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="no keys under 'backbone.'"):
        load_into_model(replace(entry, key_prefix="backbone."), dest)


def test_swin_b_simmim_is_placed_by_hand_and_checked(tmp_path):
    entry = load_registry("params/checkpoints.yaml")["swin-b-simmim"]
    placed = tmp_path / "manual" / "simmim_pretrain__swin_base__img192_window6__800ep.pth"
    entry = replace(entry, source=f"file://{placed}")
    with pytest.raises(CheckpointError) as err:
        fetch_checkpoint(entry, tmp_path / "swin-b-simmim.pth")
    assert "https://github.com/microsoft/SimMIM" in str(err.value) and str(placed) in str(err.value)
    assert not (tmp_path / "swin-b-simmim.pth").exists()

    placed.parent.mkdir()
    wrong = timm.create_model(ARCH, pretrained=False)  # supervised Swin-B at window 7: another checkpoint
    torch.save(official_swin_state(wrong), placed)
    with pytest.raises(CheckpointError, match="is not that checkpoint"):
        fetch_checkpoint(entry, tmp_path / "swin-b-simmim.pth")
    assert not (tmp_path / "swin-b-simmim.pth").exists()

    torch.manual_seed(0)
    model = timm.create_model(entry.arch, pretrained=False, num_classes=0, **entry.arch_kwargs)
    torch.save(simmim_official_state(model), placed)
    digest = fetch_checkpoint(entry, tmp_path / "swin-b-simmim.pth")
    assert digest == hashlib.sha256(placed.read_bytes()).hexdigest()
    loaded = load_into_model(entry, tmp_path / "swin-b-simmim.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert build_backbone(entry, tmp_path / "swin-b-simmim.pth").channels == [128, 256, 512, 1024]


def test_swinv2_g_entry_is_the_3b_architecture_and_names_where_its_file_goes(tmp_path):
    """SwinV2-G's weights are not public: the entry builds the 3-billion-parameter model (counted on
    the meta device, no memory) and a missing file is named with where to put it."""
    entry = load_registry("params/checkpoints.yaml")["swinv2-g-in22k"]
    with torch.device("meta"):
        model = timm.create_model(entry.arch, pretrained=False, num_classes=0, **entry.arch_kwargs)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(3.0e9, rel=0.01)
    placed = tmp_path / "manual" / "swinv2_giant_22k.pth"
    with pytest.raises(CheckpointError) as err:
        fetch_checkpoint(replace(entry, source=f"file://{placed}"), tmp_path / "swinv2-g-in22k.pth")
    assert str(placed) in str(err.value)


def test_reading_the_registry_imports_no_timm_and_hub_entries_take_timms_normalisation():
    """Every Snakemake start reads the registry: it must not pay timm's import (seconds). A timm:
    entry without input_mean/std gets the tag's own (OpenAI CLIP's) where its model is built."""
    import subprocess
    import sys

    probe = ("import sys; from frozenrep.checkpoints import load_registry; "
             "r = load_registry('params/checkpoints.yaml'); print('timm' in sys.modules, r['clip-b16'].input_mean)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "None"]
    entry = load_registry(REPO / "params/checkpoints.yaml")["clip-b16"]
    assert entry.normalisation() == (timm.data.OPENAI_CLIP_MEAN, timm.data.OPENAI_CLIP_STD)
    assert load_registry(REPO / "params/checkpoints.yaml")["vit-b16-mae"].normalisation() == (
        timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    unknown = replace(entry, source="timm:vit_base_patch16_clip_224.nowhere")
    with pytest.raises(CheckpointError, match=r"clip-b16: timm:vit_base_patch16_clip_224.nowhere names no timm"):
        unknown.normalisation()


def openai_clip_archive(model: torch.nn.Module, width: int, path) -> None:
    """A timm CLIP image tower saved as OpenAI releases CLIP: a TorchScript archive of the whole
    model in fp16 (image tower under visual.*, their key names, the projection as visual.proj, the
    text tower and the attributes their loader deletes beside it)."""
    swaps = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
             ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
    state = {}
    for key, value in model.state_dict().items():
        if key == "cls_token":
            key, value = "class_embedding", value[0, 0]
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        elif key == "head.weight":
            key, value = "proj", value.t()
        elif key == "head.bias":
            continue
        elif key.startswith("norm."):
            key = "ln_post." + key[len("norm."):]
        for timm_name, openai_name in swaps:
            key = key.replace(timm_name, openai_name)
        state[f"visual.{key}"] = value.half()
    state.update({"token_embedding.weight": torch.randn(10, width).half(), "positional_embedding": torch.randn(7, width),
                  "transformer.resblocks.0.ln_1.weight": torch.ones(width).half(), "ln_final.weight": torch.ones(width),
                  "text_projection": torch.randn(width, 8).half(), "logit_scale": torch.tensor(4.6)})
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    for name, value in (("input_resolution", 32), ("context_length", 7), ("vocab_size", 10)):
        root.register_buffer(name, torch.tensor(value))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))


def test_openai_clip_release_is_read_only_when_pinned_and_converted_by_timm(http_server, tmp_path, registry):
    """OpenAI's CLIP layout (a TorchScript archive, fp16) over HTTP with the registry's pinned sha256:
    timm's filter makes the image tower timm's CLIP ViT, the projection its head; unpinned or
    another file, the archive is refused before any of its code is compiled."""
    torch.manual_seed(0)
    official = registry["clip-b16-official"]
    kwargs = dict(embed_dim=32, depth=2, num_heads=2, img_size=32)
    model = timm.create_model(official.arch, num_classes=8, **kwargs)
    with torch.no_grad():
        model.head.bias.zero_()  # OpenAI's projection has no bias
        for p in model.parameters():
            p.copy_(p.half().float())  # the release is fp16
    archive = tmp_path / "ViT-B-16.pt"
    openai_clip_archive(model, 32, archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    entry = replace(official, source=http_server.add("/clip/ViT-B-16.pt", archive.read_bytes()), sha256=digest,
                    arch_kwargs=kwargs)
    dest = tmp_path / "clip-b16-official.pth"
    fetch_checkpoint(entry, dest)
    loaded = load_into_model(entry, dest).state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert entry.normalisation() == (timm.data.OPENAI_CLIP_MEAN, timm.data.OPENAI_CLIP_STD)
    feats = build_backbone(entry, dest)(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats.values()] == [(1, 32, 4, 4)]

    for pin, why in ((None, "the entry pins none"), ("0" * 64, "this file is another one")):
        with pytest.raises(CheckpointError, match=f"is a TorchScript archive.*{why}"):
            load_into_model(replace(entry, sha256=pin), dest)
