"""A disk that fills during a write: the old file survives, no half-written file is left, and the
error names the file. Each case runs in a subprocess whose file-size limit (RLIMIT_FSIZE) makes
every write past 4 KiB fail, as a full disk would (the kernel's EFBIG instead of ENOSPC)."""

import subprocess
import sys
import textwrap

import pytest

LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    folder = Path(sys.argv[1])
""")

CASES = {
    "metrics": """
        from frozenrep.io import write_json_atomic
        write_json_atomic(folder / "seed0.json", {"metrics": {"box_ap": 1.0}, "per_class": list(range(5000))})
    """,
    "head weights": """
        import torch
        from safetensors.torch import save
        from frozenrep.io import write_bytes_atomic
        write_bytes_atomic(folder / "head.safetensors", save({"w": torch.zeros(10_000)}, metadata={"steps": "9"}))
    """,
    "training state": """
        import torch
        from frozenrep.training import save_state
        save_state(folder / "state.pt", {"step": 9, "model": {"w": torch.zeros(10_000)}})
    """,
}


def run(code: str, folder) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMIT + textwrap.dedent(code), str(folder)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", CASES)
def test_a_write_that_fills_the_disk_keeps_the_old_file_and_names_it(tmp_path, case):
    name = {"metrics": "seed0.json", "head weights": "head.safetensors", "training state": "state.pt"}[case]
    old = tmp_path / name
    old.write_bytes(b"the previous, complete file")
    done = run(CASES[case], tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"writing {old} failed" in last and ("left as it was" in last or "last state file was kept" in last), last
    assert old.read_bytes() == b"the previous, complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_a_full_disk_stops_the_feature_cache_not_the_evaluation(tmp_path):
    code = """
        import torch
        from frozenrep.feature_cache import FeatureCache
        cache = FeatureCache("f" * 64, folder / "cache")
        x = torch.rand(2, 3, 32, 32)
        feats = cache.features(x, lambda batch: [batch.repeat(1, 8, 1, 1)])
        again = cache.features(x, lambda batch: [batch.repeat(1, 8, 1, 1)])
        assert torch.equal(feats[0], again[0]) and cache.full and cache.hits == 0, (cache.hits, cache.full)
        print("evaluated", cache.misses)
    """
    done = run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluated 4" in done.stdout and "no more entries are written in this job" in done.stderr
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no entry, whole or half
