"""The README's workflow runs as written, top to bottom, after ``make demo``.

Every fenced block that follows a ``<!-- readme-workflow -->`` comment in README.md is extracted and run, in
document order, in a fresh folder that holds only a link to ``experiments/``. ``make demo`` is stood in for by
``orderlab demo`` at a tiny budget and model size (SETUP, TINY_MODEL). Each command runs exactly as written (shell
words, comments dropped), with only the tiny overrides of OVERRIDES appended: later flags win, so they shrink
budgets and model sizes and change nothing else. ``orderlab ...`` runs in this process through
``orderlab.cli.main`` (one import of Lightning, not one per command); ``python -c ...`` runs in a subprocess.
Each must exit 0.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_fit_args

from orderlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- readme-workflow -->"

# stands in for `make demo` (which builds .venv, then runs `orderlab demo`): base.yaml with a tiny model (so that
# every later command on runs/demo/checkpoints/last.ckpt is quick), 2 steps, one small evaluation row
TINY_MODEL = {"depth": 1, "dim": 16, "heads": 2}
SETUP = ["demo", "--experiment", "tiny_base.yaml", "--max_steps", "2", "--rows", "[random:8]", "--num_samples", "16",
         "--callbacks", "false"]

# the tiny overrides appended to each README command, by subcommand; a command not listed here fails the test,
# so a new README command has to be given a small budget here first
OVERRIDES: dict[str, list[str]] = {
    "prepare": [],
    "fit": ["--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
            *(w for k, v in TINY_MODEL.items() for w in (f"--model.backbone.{k}", str(v)))],
    "evaluate": ["--num_samples", "16", "--nll_samples", "16"],
    "sample": [],
    "schedules": [],
    "bench": ["--grid", "4", "--depth", "1", "--dim", "16", "--heads", "2", "--vocab", "16", "--batches", "[1]",
              "--repeats", "1", "--archs", "[stream]"],
    "search": ["--n_trials", "2", "--evaluate.num_samples", "16"],
}


def readme_commands(text: str) -> list[list[str]]:
    """The shell words of each command in the fenced blocks marked ``<!-- readme-workflow -->``, in order."""
    blocks = re.findall(re.escape(MARK) + r"\s*\n```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_readme_blocks_are_found():
    text = (ROOT / "README.md").read_text()
    commands = readme_commands(text)
    assert text.count(MARK) >= 2 and len(commands) >= 10, commands
    assert all(c[0] in ("orderlab", "python") for c in commands), [c for c in commands if c[0] not in
                                                                     ("orderlab", "python")]
    # the paths it relies on hold across reruns: no hard-coded version_N folder
    assert not any("version_" in w for c in commands for w in c)


@pytest.mark.slow
def test_readme_workflow_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_commands((ROOT / "README.md").read_text())
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORDERLAB_CACHE", str(tmp_path / "cache"))  # the real-feature cache stays in tmp_path

    def run(args: list[str]) -> None:
        try:
            main(args)
        except SystemExit as exit_info:
            err = capsys.readouterr().err
            assert exit_info.code in (0, None), f"orderlab {shlex.join(args)} -> exit {exit_info.code}\n{err[-3000:]}"

    base = yaml.safe_load((ROOT / "experiments/digits/base.yaml").read_text())
    base["model"]["backbone"].update(TINY_MODEL)
    (tmp_path / "tiny_base.yaml").write_text(yaml.safe_dump(base))
    run(SETUP)
    assert (tmp_path / "runs/demo/checkpoints/last.ckpt").is_file()
    for words in commands:
        if words[0] == "python":
            res = subprocess.run([sys.executable, *words[1:]], check=False, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, f"{shlex.join(words)} -> exit {res.returncode}\n{res.stderr}"
            continue
        assert words[1] in OVERRIDES, f"README command {words[1]!r} has no tiny override in tests/test_readme.py"
        run(words[1:] + OVERRIDES[words[1]])
    # the stable paths the README names exist, and point at the newest run
    assert os.path.islink(tmp_path / "runs/digits/base/last.ckpt")
    assert (tmp_path / "runs/digits/base/last.ckpt").resolve().is_file()
    assert (tmp_path / "runs/digits/locality8/last.ckpt").resolve().is_file()


@pytest.mark.slow
def test_last_ckpt_link_follows_the_newest_run(digits_root, tmp_path):
    """``<save_dir>/<name>/last.ckpt`` (the path the README names) links to the newest numbered run's last.ckpt."""
    from orderlab.train.lightning_cli import run_lightning_cli

    base = ["fit", "--config", str(ROOT / "experiments" / "debug.yaml"), *tiny_fit_args(digits_root, tmp_path, 1),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.save_last=true"]
    link = tmp_path / "debug" / "last.ckpt"
    for version in (0, 1):
        run_lightning_cli(base)
        assert link.is_symlink() and os.readlink(link) == f"version_{version}/checkpoints/last.ckpt"
        assert link.resolve() == (tmp_path / "debug" / f"version_{version}" / "checkpoints" / "last.ckpt").resolve()
    # a fixed version (no numbering) gets no link; nor does a run whose folder holds a regular last.ckpt file
    run_lightning_cli([*base, "--trainer.logger.init_args.name", "fixed", "--trainer.logger.init_args.version", "v"])
    assert not (tmp_path / "fixed" / "last.ckpt").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "last.ckpt").write_text("not a link")
    run_lightning_cli([*base, "--trainer.logger.init_args.name", "mine"])
    assert (tmp_path / "mine" / "last.ckpt").read_text() == "not a link"


@pytest.mark.parametrize("text, expected", [
    (f"{MARK}\n```bash\norderlab a --x '[1, 2]'   # note\n\norderlab b \\\n    --y 1\n```\n```bash\nnot me\n```",
     [["orderlab", "a", "--x", "[1, 2]"], ["orderlab", "b", "--y", "1"]]),
])
def test_readme_extraction(text, expected):
    assert readme_commands(text) == expected
