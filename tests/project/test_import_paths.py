"""Import paths are file paths: editors and static tools follow ``prefloop.app.x`` to ``app/x.py`` in a checkout
(through the committed symlinks under ``prefloop/``), and a built wheel carries the code, the recipes and the
shipped data, so a non-editable install (a cluster image) runs ``prefloop demo``."""

import subprocess
import sys
import zipfile
from pathlib import Path

import jedi
import pytest

from tests.paths import ROOT as REPO


@pytest.mark.parametrize("module, name, file", [
    ("prefloop.app.rounds.rollout", "run_rollout", "app/rounds/rollout.py"),
    ("prefloop.app.dataflow.pipeline", "run_steps", "app/dataflow/pipeline.py"),
    ("prefloop.actors.vllm_engine", "build_llm", "actors/vllm_engine.py"),
    ("prefloop.core.losses", "dpo_loss", "core/losses.py"),
])
def test_jedi_resolves_imports_to_the_checkout_files(module, name, file):
    script = jedi.Script(f"from {module} import {name}\n{name}\n", path=str(REPO / "scratch.py"),
                         project=jedi.Project(str(REPO)))
    found = script.goto(2, 0, follow_imports=True)
    assert found, f"jedi could not resolve {module}.{name}"
    assert Path(found[0].module_path).resolve() == (REPO / file).resolve()
    assert found[0].type == "function"


def test_wheel_carries_code_recipes_and_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    wheel = next(tmp_path.glob("prefloop-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("prefloop/app/front/cli.py", "prefloop/app/dataflow/pipeline.py", "prefloop/actors/vllm_engine.py",
                 "prefloop/core/losses.py", "prefloop/recipes/demo.yaml", "prefloop/tinyworld/data/prompts.jsonl",
                 "prefloop/tinyworld/gold.py"):
        assert must in names, f"{must} missing from {wheel.name}"
