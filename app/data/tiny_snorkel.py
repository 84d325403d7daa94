"""Rebuild the tiny copy of the Snorkel set that prefloop ships (``tinyworld/tiny_cards.py``) and its partitions,
made by ``prefloop data prepare snorkel-pairs`` itself, so the shipped files are what the real command makes.

    python -m prefloop.app.data.tiny_snorkel    # rewrites tinyworld/data/snorkel_tiny/ and snorkel_tiny_prepared/
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from prefloop.app.data.data_prepare import prepare
from prefloop.tinyworld.tiny_cards import SNORKEL_TINY, SNORKEL_TINY_PREPARED, write_snorkel_tiny


def prepare_snorkel_tiny(source: Path = SNORKEL_TINY, out: Path = SNORKEL_TINY_PREPARED) -> dict:
    """``prefloop data prepare snorkel-pairs`` on the tiny copy, run from the data folder so the files name
    their rows by relative paths (``snorkel_tiny/data/...``) wherever they are built."""
    here = Path.cwd()
    os.chdir(source.parent)
    try:
        shutil.rmtree(out, ignore_errors=True)
        return prepare("snorkel-pairs", {"snorkel": source.name}, out)
    finally:
        os.chdir(here)


if __name__ == "__main__":
    print(write_snorkel_tiny())
    print(json.dumps(prepare_snorkel_tiny()["counts"], indent=1))
