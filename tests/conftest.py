"""Shared fixtures: a loopback HTTP server with fault injection, tiny data, the tiny backbone, and
the two CI-sized DAG runs (Snakemake's, DVC's) that the workflow tests read.

`make test` runs the suite on two pytest-xdist workers (``--dist loadgroup``). Tests that read the
Snakemake run go to one worker and the DVC study's to another (``pytest_collection_modifyitems``),
so each run is made once; the DVC study is also made once for a test that reads both runs.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from frozenrep.config import config_from

REPO = Path(__file__).resolve().parents[1]
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # the workers share the cores instead of each taking them all
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
# a test that reads one of these session fixtures runs on the worker of its group (the first that matches)
DAG_GROUPS = {"ci_run": "snakemake-run", "dvc_study": "dvc-study", "slurm_cluster": "slurm"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup``, name each such test's group as xdist's own ``xdist_group`` mark
    would: a ``@group`` suffix on its node id. (pytest-xdist 3.8 writes that suffix to
    ``item._nodeid``, which pytest 9.2 no longer reads, so its marks group nothing.)"""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        group = next((DAG_GROUPS[name] for name in DAG_GROUPS if name in item.fixturenames), None)
        if group:
            item._id = NodeId.parse(f"{item.nodeid}@{group}")


@dataclass
class Route:
    body: bytes
    fail_times: int = 0            # answer 500 this many times first
    cut_after: int | None = None   # on the next `cut_times` requests, close after this many bytes
    cut_times: int = 0
    ignore_range: bool = False
    status: int = 500              # the answer of the fail_times requests (429: with retry_after)
    retry_after: str | None = None
    stall_after: int | None = None  # on the next `stall_times` requests, stop sending after this many bytes
    stall_times: int = 0            # for `stall_seconds`, then close
    stall_seconds: float = 0.0
    requests: list[str | None] = field(default_factory=list)  # Range header of each request


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 serving in-memory files, with Range support and faults."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                route.requests.append(rng)
                if route.fail_times > 0:
                    route.fail_times -= 1
                    self.send_response(route.status)
                    if route.retry_after is not None:
                        self.send_header("Retry-After", route.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and not route.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(route.body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
                else:
                    self.send_response(200)
                payload = route.body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if route.cut_times > 0 and route.cut_after is not None:
                    route.cut_times -= 1
                    self.wfile.write(payload[:route.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if route.stall_times > 0 and route.stall_after is not None:
                    route.stall_times -= 1
                    self.wfile.write(payload[:route.stall_after])
                    self.wfile.flush()
                    time.sleep(route.stall_seconds)  # the connection stays open, and nothing comes
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, body: bytes, **faults) -> str:
        self.routes[path] = Route(body, **faults)
        return self.base + path


@pytest.fixture
def http_server():
    server = LoopbackServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="session")
def registry():
    from frozenrep.checkpoints import load_registry

    return load_registry(REPO / "params" / "checkpoints.yaml")


@pytest.fixture(scope="session")
def tiny_entry(registry):
    return registry["tiny-swin-none"]


@pytest.fixture(scope="session")
def job_root(tmp_path_factory, tiny_entry):
    """A directory holding the tiny backbone as ``tiny.safetensors``; job datasets are generated beside it."""
    from frozenrep.local_backbones import create_local_backbone

    root = tmp_path_factory.mktemp("jobs")
    create_local_backbone(tiny_entry, root / "tiny.safetensors")
    return root, tiny_entry


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A small generated COCO dataset (64-px images), shared by the tests that only read it."""
    from frozenrep.synthetic import coco

    root = tmp_path_factory.mktemp("data") / "coco"
    coco.generate(root, num_train=12, num_val=6, image_size=64, num_categories=3, max_objects=3,
                  min_radius=6, max_radius=14, seed=0)
    return root


@pytest.fixture
def remapped_coco(tmp_path, tiny_coco):
    """The tiny dataset with non-contiguous category ids (as real COCO has: 1..90 with gaps)."""
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(tiny_coco, root)
    remap = {1: 5, 2: 17, 3: 90}
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        for cat in data["categories"]:
            cat["id"] = remap[cat["id"]]
        for ann in data["annotations"]:
            ann["category_id"] = remap[ann["category_id"]]
        path.write_text(json.dumps(data))
    return root


class DispatchedOps(TorchDispatchMode):
    """The aten operators dispatched inside ``with DispatchedOps() as ops:`` (``ops.names``):
    a test sees whether code reads a value back to the host (``aten::_local_scalar_dense``)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


TINY_HEAD = dict(fpn_channels=16, anchor_sizes=((8,), (16,), (32,), (64,), (128,)), box_head_fc=32,
                 mask_head_convs=1, min_size=64, max_size=64, rpn_batch_size_per_image=32,
                 box_batch_size_per_image=32, rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                 rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, detections_per_image=10)


@pytest.fixture
def tiny_detector(tiny_entry):
    """Factory: a Mask R-CNN on the tiny Swin (random weights) in the given mode, on the given
    detection engine (``coco.engine``), with ``head`` replacing keys of the tiny head."""
    from types import SimpleNamespace

    import torch

    from frozenrep.backbones import build_backbone
    from frozenrep.tasks.coco import build_head

    def make(mode: str = "frozen", num_classes: int = 4, seed: int = 0, engine: str = "torchvision", **head):
        torch.manual_seed(seed)
        backbone = build_backbone(tiny_entry, None, mode=mode)
        if engine == "detectron2":
            head = {"fpn_channels": 32, **head}  # Detectron2's GroupNorm has 32 groups
        cfg = {"engine": engine, "head": {**TINY_HEAD, **head}}  # what the job's build_head is given
        return build_head(backbone, SimpleNamespace(num_classes=num_classes), cfg, tiny_entry)

    return make


@dataclass
class MlflowServer:
    uri: str
    store: Path        # the server's sqlite backend store
    artifacts: Path    # where the server keeps (proxied) artifacts
    process: Any = None


@contextmanager
def running_mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on a free 127.0.0.1 port (sqlite store, proxied artifacts) while
    the block runs; its process group is ended afterwards (``server.process``: to end it sooner)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = MlflowServer(f"http://127.0.0.1:{port}", root / "store.db", root / "artifacts")
    log = open(root / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1", "--backend-store-uri", f"sqlite:///{server.store}",
                                "--artifacts-destination", str(server.artifacts)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server.process = process
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up on port {port}:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` for the whole session (the CI workspace's runs go there)."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory, mlflow_server):
    """The CI profile's whole DAG, run once with Snakemake, tracked on a real MLflow server:
    (workspace, completed process)."""
    from workspace import make_workspace, snakemake

    ws = make_workspace(tmp_path_factory.mktemp("ci") / "ws")
    result = snakemake(ws, "--cores", "2", "--configfile=params/ci.yaml", "results/table1.csv",
                       env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    return ws, result


def made_once_per_run(tmp_path_factory, name: str, make) -> tuple[Path, subprocess.CompletedProcess]:
    """``make(root)`` -> (workspace, completed process), made once for the whole pytest run: under
    xdist the first worker to ask makes it in the run's own temporary folder while holding a lock,
    and the others wait for it and read what it recorded (so a failure fails them too)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    record = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not record.exists():
            try:
                ws, done = make(shared / name)
            except BaseException as error:
                record.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
                raise
            record.write_text(json.dumps({"ws": str(ws), "args": done.args, "returncode": done.returncode,
                                          "stdout": done.stdout, "stderr": done.stderr}))
    saved = json.loads(record.read_text())
    if "error" in saved:
        pytest.fail(f"{name}: failed in another worker: {saved['error'][:5000]}")
    return Path(saved["ws"]), subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"],
                                                           saved["stderr"])


@pytest.fixture(scope="session")
def dvc_study(tmp_path_factory):
    """The CI profile's study reproduced from scratch by ``dvc repro`` in a git + DVC workspace
    (tables 1 to 4, tracked in the workspace's sqlite store), then committed: (workspace, completed
    process). Made once per run (``made_once_per_run``); tests that change it work on a copy
    (``workspace.copy_workspace``)."""
    from workspace import dvc, git, make_dvc_workspace

    def make(root):
        ws = make_dvc_workspace(root / "ws", "params/ci.yaml", root / "remote")
        result = dvc(ws, "repro")
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
        git(ws, "commit", "-qm", "study reproduced")  # dvc.lock (core.autostage staged it)
        return ws, result

    return made_once_per_run(tmp_path_factory, "dvc", make)
