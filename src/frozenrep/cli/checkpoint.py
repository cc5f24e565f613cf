"""``frozenrep-checkpoint``: fetch a registry entry, or pin the hash of its first verified download."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frozenrep.checkpoints import CheckpointError, fetch_checkpoint, load_into_model, load_registry, pin_sha256
from frozenrep.io import file_digest
from frozenrep.progress import setup_logging


def main(argv: list[str] | None = None) -> int:
    """``frozenrep-checkpoint``: fetch a registry entry, or pin the hash of its first verified download."""
    setup_logging()
    parser = argparse.ArgumentParser(prog="frozenrep-checkpoint", description=main.__doc__)
    parser.add_argument("--registry", default="params/checkpoints.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download and verify NAME into checkpoints/")
    p_fetch.add_argument("name")
    p_fetch.add_argument("--dest", help="output path (default checkpoints/NAME.pth|.safetensors)")
    p_pin = sub.add_parser("pin", help="record the sha256 of the verified local copy of NAME in the registry")
    p_pin.add_argument("name")
    p_pin.add_argument("--file", help="the verified file (default: its path under checkpoints/)")
    args = parser.parse_args(argv)
    try:
        registry = load_registry(args.registry)
        if args.name not in registry:
            raise CheckpointError(f"no checkpoint named {args.name!r} in {args.registry}; known: {', '.join(registry)}")
        entry = registry[args.name]
        if args.command == "fetch":
            fetch_checkpoint(entry, args.dest or entry.local_path())
        else:
            path = Path(args.file) if args.file else entry.local_path()
            if not path.is_file():
                raise CheckpointError(f"{path} does not exist: fetch {args.name} first.")
            digest = file_digest(path)
            load_into_model(entry, path)  # pin only what really loads into the architecture
            pin_sha256(args.registry, args.name, digest)
            print(f"{args.name}: sha256 {digest} pinned in {args.registry}")
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
