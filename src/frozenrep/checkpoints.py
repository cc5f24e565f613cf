"""The checkpoint registry (params/checkpoints.yaml): fetching, safe loading, conversion to timm.

Fetched checkpoints are data, never code: safetensors files are read with safetensors, everything
else with ``torch.load(weights_only=True)``; a TorchScript archive (OpenAI's CLIP release) only when
the registry pins its sha256 and the file has it. Official releases (Microsoft's Swin/SwinV2, Meta's
DINOv2 and MAE, OpenAI's CLIP) are converted to timm keys by timm's own ``checkpoint_filter_fn`` of
the architecture's module and loaded strictly. ``timm:<arch>.<tag>`` sources come from the Hugging
Face hub through ``huggingface_hub``'s client and cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_ENDPOINT`` and ``HF_TOKEN`` work as everywhere else).
"""

from __future__ import annotations

import importlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from frozenrep.download import fetch, local_source_path

if TYPE_CHECKING:
    import torch
from frozenrep.io import write_text_atomic
from frozenrep.progress import log

FORMATS = ("official-swin", "official-swinv2", "official", "timm", "safetensors")
CONVERTED = ("official-swin", "official-swinv2", "official", "timm")  # through timm's checkpoint_filter_fn
HUB_FILE = "model.safetensors"  # what timm's hub repositories hold


class CheckpointError(RuntimeError):
    """A checkpoint could not be used; the message names the file and what to do."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One registry entry: where a backbone's weights come from and what they are."""

    name: str
    source: str
    format: str
    arch: str
    pretraining: str
    sha256: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_keys: tuple[str, ...] = ()
    key_prefix: str = ""
    manual: str = ""
    create: dict[str, Any] | None = None
    # None only for a ``timm:`` source that gives none: timm's pretrained config of the tag says
    # (CLIP's and some ViTs' differ from ImageNet's); read them through ``normalisation()``.
    input_mean: tuple[float, float, float] | None = (0.485, 0.456, 0.406)
    input_std: tuple[float, float, float] | None = (0.229, 0.224, 0.225)
    note: str = ""

    @classmethod
    def from_dict(cls, item: dict[str, Any], name: str | None = None) -> "CheckpointEntry":
        """An entry from its registry (or JSON) form: lists become tuples, notes for humans are dropped."""
        item = {k: v for k, v in item.items() if k != "sha256_note"}
        for key in ("input_mean", "input_std", "drop_keys"):
            if item.get(key) is not None:
                item[key] = tuple(item[key])
        return cls(**item) if name is None else cls(name=name, **item)

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The input mean and std the backbone was trained with: the registry's, else (``timm:``
        sources) those of timm's pretrained config of the tag, looked up only here, where the model
        is built, so that reading the registry does not import timm."""
        if self.input_mean is not None and self.input_std is not None:
            return self.input_mean, self.input_std
        cfg = timm_pretrained_cfg(self)
        if cfg is None:
            raise CheckpointError(f"registry entry {self.name}: {self.source} names no timm pretrained config; "
                                  "give input_mean and input_std, or use a name from `timm.list_pretrained()`.")
        return self.input_mean or tuple(cfg.mean), self.input_std or tuple(cfg.std)

    @property
    def suffix(self) -> str:
        return ".safetensors" if self.format == "safetensors" else ".pth"

    def local_path(self, root: str | Path = "checkpoints") -> Path:
        """Where the verified copy of this checkpoint lives."""
        return Path(root) / f"{self.name}{self.suffix}"


def load_registry(path: str | Path) -> dict[str, CheckpointEntry]:
    """Read and validate the registry; raises CheckpointError naming the entry and key at fault."""
    import jsonschema

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read checkpoint registry {path}: {err}") from err
    schema_path = path.parent / "schemas" / "checkpoints.schema.yaml"  # params/schemas/ beside the registry
    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(raw), key=lambda e: list(e.path))
    if errors:
        lines = [f"  {'.'.join(str(p) for p in e.path) or '<top>'}: {e.message}" for e in errors[:10]]
        raise CheckpointError(f"checkpoint registry {path} is invalid:\n" + "\n".join(lines))
    return {name: CheckpointEntry.from_dict(from_the_hub_where_not_given(item), name) for name, item in raw.items()}


def from_the_hub_where_not_given(item: dict[str, Any]) -> dict[str, Any]:
    """A ``timm:`` entry without input mean or std leaves them to timm's pretrained config
    (``CheckpointEntry.normalisation``); other entries default to ImageNet's."""
    if not item["source"].startswith("timm:"):
        return item
    return {"input_mean": None, "input_std": None, **item}


def timm_pretrained_cfg(entry: CheckpointEntry):
    """timm's pretrained config of a ``timm:<arch>.<tag>`` source, or None where timm has none."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(entry.source[len("timm:"):])
    except RuntimeError:  # timm's answer to an unknown tag of a known architecture
        return None


def hub_repo(entry: CheckpointEntry) -> str:
    """The Hugging Face hub repository of a ``timm:<arch>.<tag>`` source (timm's pretrained config)."""
    cfg = timm_pretrained_cfg(entry)
    if cfg is None or not cfg.hf_hub_id:
        raise CheckpointError(f"registry entry {entry.name}: {entry.source} names no timm hub weights; "
                              "use a name from `timm.list_pretrained()`.")
    return cfg.hf_hub_id


def resolve_source(entry: CheckpointEntry) -> str:
    """What to fetch: the entry's URL, or for ``timm:`` the file in huggingface_hub's cache, downloaded
    by its client first when it is not there."""
    if not entry.source.startswith("timm:"):
        return entry.source
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = hub_repo(entry)
    try:
        path = hf_hub_download(repo, HUB_FILE)
    except LocalEntryNotFoundError as err:
        raise CheckpointError(f"registry entry {entry.name}: {repo}/{HUB_FILE} is not in the Hugging Face cache and "
                              f"could not be downloaded ({str(err).splitlines()[0]}). Connect to the hub, or put the "
                              "file in the cache (`huggingface-cli download` on a machine with access).") from err
    except HfHubHTTPError as err:
        raise CheckpointError(f"registry entry {entry.name}: the hub refused {repo}/{HUB_FILE}: "
                              f"{str(err).splitlines()[0]}") from err
    return Path(path).resolve().as_uri()


def expected_sha256(entry: CheckpointEntry) -> str | None:
    """The pinned hash, or for a locally created file the hash its producer recorded beside it."""
    if entry.sha256:
        return entry.sha256
    if urlparse(entry.source).scheme == "file":
        sidecar = Path(str(local_source_path(entry.source)) + ".sha256")
        if sidecar.exists():
            return sidecar.read_text().split()[0]
    return None


def fetch_checkpoint(entry: CheckpointEntry, dest: str | Path, **kwargs: Any) -> str:
    """Fetch and verify one checkpoint; write ``<dest>.sha256``; return the sha256.

    A ``manual`` entry's file is put in place by a person (its host needs a browser): when it is
    missing the error says where to get it and where to put it; when it is there it must load
    strictly into the entry's architecture before it is copied.
    """
    dest = Path(dest)
    if entry.manual:
        placed = local_source_path(entry.source)
        if not placed.is_file():
            raise CheckpointError(
                f"registry entry {entry.name} is downloaded by hand: get it from {entry.manual} "
                f"(a browser is needed), save it as {placed.resolve()} and run the workflow again."
                + (f" {entry.note}" if entry.note else ""))
        try:
            load_into_model(entry, placed)
        except CheckpointError as err:
            raise CheckpointError(f"{placed} was put in place for registry entry {entry.name} but is not that "
                                  f"checkpoint (get it again from {entry.manual}):\n{err}") from err
    expected = expected_sha256(entry)
    digest = fetch(resolve_source(entry), dest, sha256=expected, **kwargs)
    if expected is None:
        log.warning("checkpoint %s has no pinned sha256 (%s). First verified download: %s. Pin it with "
                    "`frozenrep-checkpoint pin %s` so later downloads are checked.",
                    entry.name, entry.note or "none published", digest, entry.name)
    write_text_atomic(str(dest) + ".sha256", f"{digest}  {dest.name}\n")
    return digest


def pin_sha256(registry_path: str | Path, name: str, digest: str) -> None:
    """Write ``sha256: <digest>`` into the registry entry ``name``, keeping comments and layout."""
    registry_path = Path(registry_path)
    lines = registry_path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"{name}:"), None)
    if start is None:
        raise CheckpointError(f"{registry_path}: no entry named {name!r}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in (" ", "\t", "\n", "#")), len(lines))
    for i in range(start + 1, end):
        match = re.match(r"(\s+)sha256:\s*(\S*)(.*)$", lines[i].rstrip("\n"))
        if match:
            lines[i] = f"{match.group(1)}sha256: {digest}{match.group(3)}\n"
            break
    else:
        indent = re.match(r"\s+", lines[start + 1]).group(0) if start + 1 < end else "  "
        lines.insert(start + 1, f"{indent}sha256: {digest}\n")
    write_text_atomic(registry_path, "".join(lines))


def is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive: a torch zip file holding compiled code beside its tensors."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/__torch__/" in name for name in archive.namelist())


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, "torch.Tensor"]:
    """Read tensors from a checkpoint file without running any code from it.

    A TorchScript archive holds code that loading compiles (OpenAI publishes CLIP so): it is read
    only when ``sha256`` (the registry's pin) is given and the file has it, that is, when it is the
    very file its authors published.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; run `snakemake {path}` to fetch it.")
    if path.suffix != ".safetensors" and is_torchscript_archive(path):
        from frozenrep.io import file_digest

        if sha256 is None or file_digest(path) != sha256:
            raise CheckpointError(
                f"checkpoint {path} is a TorchScript archive, whose loading compiles the code it holds: frozenrep "
                "reads one only when the registry entry pins its sha256 and the file has it "
                + ("(the entry pins none; pin the published hash)." if sha256 is None else
                   f"(the entry pins {sha256}; this file is another one: fetch it again)."))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({err}); delete it and fetch again.") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds pickled objects other than tensors, which could run code "
            f"when loaded ({str(err).splitlines()[0]}). frozenrep never unpickles fetched files; convert it to "
            "safetensors or a plain state dict in a trusted environment."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({err}); delete it and fetch again.") from err
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors (top-level keys: "
                              f"{list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__}).")
    return obj


def checkpoint_filter(arch: str):
    """timm's own ``checkpoint_filter_fn`` for the module that defines ``arch``."""
    import timm

    module = importlib.import_module(timm.models.model_entrypoint(arch).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        raise CheckpointError(f"timm module {module.__name__} has no checkpoint_filter_fn for {arch}")
    return filter_fn


def create_model(entry: CheckpointEntry, num_classes: int = 0, **overrides: Any) -> "torch.nn.Module":
    """Build the registry entry's timm architecture (random weights), accepting any input size.

    Transformers with position embeddings are built with ``dynamic_img_size`` (resampled to the
    input); CNNs, which take any size anyway, do not know the argument and are built without it.
    """
    import timm

    kwargs = {**entry.arch_kwargs, **overrides}
    if "dynamic_img_size" in kwargs:
        return timm.create_model(entry.arch, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(entry.arch, pretrained=False, num_classes=num_classes, dynamic_img_size=True, **kwargs)
    except TypeError as err:
        if "dynamic_img_size" not in str(err):
            raise
        return timm.create_model(entry.arch, pretrained=False, num_classes=num_classes, **kwargs)


def load_into_model(entry: CheckpointEntry, path: str | Path, **overrides: Any) -> "torch.nn.Module":
    """Build ``entry.arch`` and load the checkpoint strictly, converting official keys with timm.

    The classifier of the checkpoint (if any) is kept so that loading stays strict; the feature
    extractor built from the model drops it.
    """
    state = read_state_dict(path, entry.sha256)
    if entry.key_prefix:
        inner = {k[len(entry.key_prefix):]: v for k, v in state.items() if k.startswith(entry.key_prefix)}
        if not inner:
            raise CheckpointError(f"checkpoint {path} has no keys under {entry.key_prefix!r} (registry entry "
                                  f"{entry.name}, key_prefix); its keys start {sorted(state)[:5]}.")
        state = inner
    if entry.drop_keys:
        state = {k: v for k, v in state.items() if not any(re.search(p, k) for p in entry.drop_keys)}
    head = state.get("head.fc.weight", state.get("head.weight"))
    model = create_model(entry, num_classes=0 if head is None else head.shape[0], **overrides)
    if entry.format in CONVERTED:
        state = checkpoint_filter(entry.arch)(state, model)
        converted_head = state.get("head.weight")  # OpenAI CLIP's projection becomes timm's head
        if head is None and converted_head is not None:
            model = create_model(entry, num_classes=converted_head.shape[0], **overrides)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        raise CheckpointError(f"checkpoint {path} does not fit {entry.arch} (registry entry {entry.name}): "
                              f"{str(err).strip()}\nCheck the entry's arch and arch_kwargs.") from err
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:15]) + (f" … ({len(keys)} in all)" if len(keys) > 15 else "") if keys else "none"

        raise CheckpointError(
            f"checkpoint {path} does not fit {entry.arch} (registry entry {entry.name}, format {entry.format}).\n"
            f"  missing keys: {show(list(missing))}\n  unexpected keys: {show(list(unexpected))}\n"
            "Check the entry's arch, arch_kwargs and format, or list keys to ignore under drop_keys."
        )
    return model
