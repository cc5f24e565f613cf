"""``frozenrep-check-backbone``: a registry entry on every task's head, frozen and fine-tuned, at tiny sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frozenrep.checkpoints import CheckpointError, load_registry
from frozenrep.progress import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Build each task's head on a registry entry's backbone, train one step on a few generated samples
    and evaluate them, frozen and fine-tuned, on the CPU; print what works and what fails, and why.
    Exits 1 if anything fails."""
    setup_logging()
    parser = argparse.ArgumentParser(prog="frozenrep-check-backbone", description=main.__doc__)
    parser.add_argument("name", help="registry entry")
    parser.add_argument("--registry", default=None, help="checkpoint registry (default: the profile's)")
    parser.add_argument("--profile", default="params/ci.yaml",
                        help="whose head settings and image sizes to use (default: the CI-sized profile)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights to load strictly (default: the fetched checkpoints/<name> if it exists, "
                             "else random weights)")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the profile's tasks")
    parser.add_argument("--modes", nargs="+", default=None, choices=["frozen", "finetune"])
    args = parser.parse_args(argv)

    import torch

    from frozenrep.check import check_backbone
    from frozenrep.config import load_profile

    torch.set_num_threads(min(torch.get_num_threads(), 4))
    try:
        config = load_profile(args.profile)
        registry = load_registry(args.registry or config["registry"])
        if args.name not in registry:
            raise CheckpointError(f"no entry {args.name!r} in {args.registry or config['registry']}; "
                                  f"known: {', '.join(sorted(registry))}")
        checkpoint = args.checkpoint
        if checkpoint is None and registry[args.name].local_path().is_file():
            checkpoint = registry[args.name].local_path()
        if checkpoint is not None and not checkpoint.is_file():
            raise CheckpointError(f"checkpoint {checkpoint} does not exist")
        print(f"{args.name}: {registry[args.name].arch}, "
              f"{f'weights {checkpoint}' if checkpoint else 'random weights (no checkpoint fetched)'}; "
              f"heads of {args.profile}")
        results = check_backbone(config, registry, args.name, checkpoint, args.tasks, args.modes)
    except (CheckpointError, KeyError, OSError, ValueError) as err:
        print(f"frozenrep-check-backbone: {err}", file=sys.stderr)
        return 2
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} (task, mode) pairs work" + (": fix the failures above "
          "before a long job." if failed else "."))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
