"""A new user's mistakes, each run as ``python -m prefloop ...`` in a subprocess: the exit code (2 user error,
1 a check found a problem), one line on stderr that names the thing, no traceback, and Ray never imported
(so never started): the runner below reports ``ray`` in ``sys.modules`` at exit."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import card_fixtures as fx
from tests.paths import ROOT

DEMO, SNORKEL = str(ROOT / "recipes" / "demo.yaml"), str(ROOT / "recipes" / "snorkel-pairrm-dpo.yaml")
RUNNER = ("import atexit, runpy, sys\n"
          "atexit.register(lambda: 'ray' in sys.modules and sys.stderr.write('RAY WAS IMPORTED\\n'))\n"
          "module = sys.argv[2] if sys.argv[1:2] == ['--module'] else 'prefloop'\n"
          "sys.argv = [module, *sys.argv[3 if module != 'prefloop' else 1:]]\n"
          "runpy.run_module(module, run_name='__main__')\n")


def prefloop(*args: str, env: dict | None = None, cwd: Path = ROOT, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Folders the mistakes point at: a file where a folder belongs, a full --out, a folder of runs."""
    t = tmp_path_factory.mktemp("mistakes")
    (t / "a_file").write_text("x")
    (t / "full").mkdir()
    (t / "full" / "prompts-0.parquet").write_text("old")
    run = t / "runs" / "demo"
    (run / "round_0" / "rollout").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: demo\n")
    fx.alpaca_eval(t / "ae")
    (t / "empty.jsonl").write_text("")
    return t


MISTAKES = [  # (what, args, exit code, words the one line must hold)
    ("--set without =", ["recipe", "check", DEMO, "--set", "rollout.num_samples"], 2, "expected KEY=VALUE"),
    ("--set unknown key", ["run", DEMO, "--set", "rollout.num_smples=8"], 2,
     "did you mean rollout.num_samples"),
    ("--set broken list", ["recipe", "check", DEMO, "--set", "rollout.num_samples=[1,"], 2, "does not parse"),
    ("--set a section as a value", ["recipe", "check", DEMO, "--set", "rollout.seed.x=1"], 2, "not a section"),
    ("missing recipe", ["run", "nope.yaml"], 2, "recipe file not found"),
    ("missing --cluster", ["plan", SNORKEL, "--cluster", "nope.yaml"], 2, "--cluster nope.yaml: no such file"),
    ("not a cluster file", ["plan", SNORKEL, "--cluster", DEMO], 2, "no node type with GPUs"),
    ("run: missing --cluster", ["run", DEMO, "--cluster", "nope.yaml"], 2, "no such file"),
    ("run: bad $PREFLOOP_CLUSTER", ["run", DEMO, "$ENV", "PREFLOOP_CLUSTER=nope.yaml"], 2,
     "$PREFLOOP_CLUSTER nope.yaml"),
    ("--out is a file", ["data", "prepare", "alpaca-eval", "--source", "{t}/ae", "--out", "{t}/a_file"], 2,
     "is a file"),
    ("--out not empty", ["data", "prepare", "alpaca-eval", "--source", "{t}/ae", "--out", "{t}/full"], 2,
     "add --force"),
    ("--limit below 1", ["data", "prepare", "alpaca-eval", "--source", "{t}/ae", "--out", "{t}/o1",
                         "--limit", "-3"], 2, "--limit must be >= 1"),
    ("nothing kept", ["data", "prepare", "alpaca-eval", "--source", "{t}/empty.jsonl", "--out", "{t}/o2"], 1,
     "kept no row"),
    ("unknown URI scheme", ["status", "foo://bucket/run"], 2, "cannot open this URI"),
    ("a folder of runs", ["status", "{t}/runs"], 2, "did you mean"),
    ("a folder inside a run", ["status", "{t}/runs/demo/round_0"], 2, "did you mean"),
    ("a folder with no run", ["status", "{t}/full"], 2, "not a run directory"),
    ("a URI with no run", ["status", "file://{t}/full"], 2, "not a run directory"),
    ("grade an empty folder", ["--module", "prefloop.tinyworld.grade", "{t}/full"], 2, "no round_0"),
    ("preflight: missing data file", ["run", DEMO, "--set", "data.train=/nonexistent/p.jsonl"], 1,
     "/nonexistent/p.jsonl"),
    ("demo: missing data file", ["demo", "--set", "data.train=/nonexistent/p.jsonl"], 1, "/nonexistent/p.jsonl"),
    ("train: missing train.data", ["train", DEMO, "--round", "1", "--set", "train.data=/nope/prefs-{round}.parquet"],
     1, "train.data (round 1): /nope/prefs-1.parquet"),
]


@pytest.mark.parametrize("what,args,code,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_its_exit_code(world, what, args, code, words):
    env = {}
    if "$ENV" in args:
        i = args.index("$ENV")
        env = dict([args[i + 1].split("=", 1)])
        args = args[:i] + args[i + 2:]
    got = prefloop(*[a.replace("{t}", str(world)) for a in args], env=env)
    err = got.stderr.strip()
    assert got.returncode == code, (what, got.returncode, err)
    assert "Traceback" not in err and "RAY WAS IMPORTED" not in err, (what, err)
    # the preflight lists its problems one per indented line; "HH:MM:SS assets: cached" is the console's log
    lines = [line for line in err.splitlines() if not line.startswith("  ") and not re.match(r"\d\d:\d\d:\d\d ", line)]
    assert len(lines) == 1 and words in err, (what, err)


def test_a_closed_pipe_ends_quietly():
    """``prefloop plan ... | head`` where head has gone: no BrokenPipe traceback."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "prefloop", "plan", SNORKEL], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 2 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_help_version_and_verbose_anywhere():
    got = prefloop("--version")
    assert got.returncode == 0 and got.stdout.startswith("prefloop ")
    got = prefloop("recipe", "check", DEMO, "-v")  # -v after the subcommand
    assert got.returncode == 0 and "preflight ok" in got.stderr, got.stderr
    for command in (["run"], ["data", "prepare"], ["serve"], ["assets", "build"], ["plan"], ["status"]):
        text = prefloop(*command, "--help").stdout
        assert "examples:" in text and "exit status: 0 ok, 1" in text, command
        assert "(default:" in text, command
    assert "--allow-recipe-change" not in prefloop("plan", "--help").stdout
    assert "--allow-recipe-change" not in prefloop("recipe", "check", "--help").stdout


def test_set_values_as_users_write_them():
    got = prefloop("recipe", "check", SNORKEL, "--tiny", "--schema-only",
                   "--set", "data.eval={data}/heldout.jsonl", "--set", "tiny.rollout.max_tokens=24",
                   "--set", "name=2026-01-01")
    assert got.returncode == 0, got.stderr
    assert "/heldout.jsonl" in got.stdout and "max_tokens: 24" in got.stdout and "name: '2026-01-01'" in got.stdout


def test_readme_command_table_matches_the_parser():
    """Every command of the parser is in the README's table, and every option the table names exists."""
    from prefloop.app.front.cli import build_parser

    block = (ROOT / "README.md").read_text().split("## Commands\n\n", 1)[1].split("\n\n", 1)[0]
    commands = build_parser()._subparsers._group_actions[0].choices
    leaves = {(f"{name} {sub}" if p._subparsers else name)
              for name, p in commands.items()
              for sub in (p._subparsers._group_actions[0].choices if p._subparsers else [None])}
    listed = set()
    for line in block.splitlines():
        usage = re.split(r"\s{2,}", line.strip())[0].split()
        assert usage[0] == "prefloop", line
        p, name = commands[usage[1]], usage[1]
        if p._subparsers:
            p, name = p._subparsers._group_actions[0].choices[usage[2]], f"{name} {usage[2]}"
        listed.add(name)
        options = {o for a in p._actions for o in a.option_strings}
        named = set(re.findall(r"--[a-z][a-z-]*", " ".join(usage)))
        assert named <= options, (name, named - options)
    assert listed == leaves, leaves ^ listed


def test_plan_finds_its_cluster_as_run_does(tmp_path):
    """$PREFLOOP_CLUSTER (which `run` honours) and, without it, the checkout's ray-cluster.yaml from any folder."""
    service = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
    got = prefloop("plan", SNORKEL, env={"PREFLOOP_CLUSTER": str(service)}, cwd=tmp_path)
    assert f"on {service}" in got.stdout.splitlines()[0], got.stdout + got.stderr
    env = {k: v for k, v in os.environ.items() if k != "PREFLOOP_CLUSTER"}
    got = subprocess.run([sys.executable, "-m", "prefloop", "plan", SNORKEL], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, timeout=120)
    assert got.returncode == 0 and f"on {ROOT / 'ray-cluster.yaml'}" in got.stdout, got.stdout + got.stderr
