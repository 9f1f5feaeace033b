"""Convert an original CGCNN checkpoint (*.pth.tar: regression, or a two-class classifier) into a crystal-train checkpoint (.pt).

    python scripts/convert_cgcnn_checkpoint.py formation-energy-per-atom.pth.tar \\
        --atom-init atom_init.json --output formation-energy.pt

The result loads with crystal-predict/crystal-eval ckpt=formation-energy.pt, no atom_init needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crystal_train.models.cgcnn_import import convert_reference_checkpoint
from crystal_train.training.checkpoint import save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="original CGCNN checkpoint (*.pth.tar)")
    parser.add_argument("--atom-init", type=Path, required=True, help="the atom_init.json the model was trained with")
    parser.add_argument("--output", type=Path, required=True, help="crystal-train checkpoint to write (.pt)")
    args = parser.parse_args(argv)
    if args.output.expanduser().resolve() in (args.input.expanduser().resolve(), args.atom_init.expanduser().resolve()):
        print(f"error: --output {args.output} would replace an input: give another file", file=sys.stderr)
        return 1
    if args.output.name.endswith(".pth.tar"):  # read back as an original CGCNN checkpoint, which it no longer is
        print(f"error: --output {args.output} ends in .pth.tar, the original format's name: give a .pt file", file=sys.stderr)
        return 1
    try:
        checkpoint = convert_reference_checkpoint(args.input, args.atom_init)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    save_checkpoint(args.output, **checkpoint)
    print(f"Wrote {args.output} (CGCNN {checkpoint['config']['model']}, normaliser {checkpoint['normalizer']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
