"""Training through the CLI: one-line config errors, checkpoints that sample, resume after a real kill, DDP."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_fit_args
from helpers import UNKNOWN

from orderlab.decoding.decode import generate
from orderlab.train.checkpoint import load_checkpoint
from orderlab.train.lightning_cli import run_lightning_cli
from orderlab.train.module import OrderModule, default_budgets, lr_factor

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "experiments" / "debug.yaml")
ORDERLAB = str(Path(sys.executable).parent / "orderlab")


def fit_args(root, out, steps=2):
    """debug.yaml's tiny run with its TensorBoard logger under ``out`` too (the YAML's save_dir is runs/debug)."""
    return [*tiny_fit_args(root, out, steps), "--trainer.logger.init_args.save_dir", str(out)]


def _fit_error(capsys, digits_root, tmp_path, *extra):
    with pytest.raises(SystemExit) as exc:
        run_lightning_cli(["fit", "--config", DEBUG, *fit_args(digits_root, tmp_path), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line
    assert not list(tmp_path.rglob("*.ckpt")), "training started despite a config error"
    return err[0]


@pytest.mark.parametrize("extra, key", [
    (["--model.train_schedule", UNKNOWN], UNKNOWN),
    (["--model.bogus_key", "1"], "bogus_key"),
    (["--model.budgets", "[8, 100]"], "model.budgets"),
    (["--model.backbone.height", "7"], "model.backbone.height"),
    (["--model.backbone.vocab_size", "16"], "model.backbone.vocab_size"),
    (["--data.root", "/nonexistent/digits"], "/nonexistent/digits"),
])
def test_config_mistakes_fail_in_one_line_naming_the_key(capsys, digits_root, tmp_path, extra, key):
    line = _fit_error(capsys, digits_root, tmp_path, *extra)
    assert line.startswith("orderlab fit: error:") and key in line, line


def test_unknown_schedule_lists_the_choices(capsys, digits_root, tmp_path):
    line = _fit_error(capsys, digits_root, tmp_path, "--model.train_schedule", UNKNOWN)
    assert UNKNOWN in line
    for name in ("locality", "random", "raster"):
        assert name in line


def test_train_schedule_by_class_path(digits_root, tmp_path):
    cli = run_lightning_cli(["fit", "--config", DEBUG, *fit_args(digits_root, tmp_path),
                             "--model.train_schedule", "orderlab.schedules.locality.Locality",
                             "--model.train_schedule.repulsion", "1"])
    assert type(cli.model.train_plans).__name__ == "Locality" and cli.model.train_plans.repulsion == 1


def test_checkpoint_holds_what_sampling_needs(tiny_ckpt):
    loaded = load_checkpoint(tiny_ckpt)
    assert (loaded.config.height, loaded.config.width, loaded.config.vocab_size) == (8, 8, 17)
    assert loaded.data["tokenizer"]["name"] == "pixel" and loaded.data["grid"] == [8, 8]
    assert loaded.data["name"] == "digits"
    tokens = generate(loaded.model, "locality", 8, torch.arange(4), seed=0)
    images = loaded.decode_tokens(tokens)
    assert images.shape == (4, 1, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(str(bad))
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not written by orderlab"):
        load_checkpoint(str(bad))


def test_lr_schedule_and_weight_decay_groups():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 10, 100, 0.1) < 1.0
    assert default_budgets(64) == [64, 32, 16, 8, 4]
    m = OrderModule(budgets=[8])
    m.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    opt = m.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.model.parameters()))


def test_training_plans_are_seeded_and_share_sizes():
    m = OrderModule(budgets=[16, 8])
    a = m.plans_for(4, 8, m.train_plans, 0, "train-plan", 3, 0)
    b = m.plans_for(4, 8, m.train_plans, 0, "train-plan", 3, 0)
    assert [p.order.tolist() for p in a] == [p.order.tolist() for p in b]
    assert len({tuple(p.order.tolist()) for p in a}) == 4  # one random order per sample
    assert len({p.sizes for p in a}) == 1 and len(a[0].sizes) == 8


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_resume_after_kill_continues_from_the_saved_step(digits_root, tmp_path):
    ckdir = tmp_path / "ck"
    args = [ORDERLAB, "fit", "--config", DEBUG, *fit_args(digits_root, tmp_path, 400),
            "--trainer.val_check_interval", "1000", "--trainer.callbacks+=ModelCheckpoint",
            f"--trainer.callbacks.dirpath={ckdir}", "--trainer.callbacks.every_n_train_steps=5",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks+=probes.RecordStart",
            f"--trainer.callbacks.path={tmp_path / 'starts.txt'}", "--trainer.callbacks+=probes.PauseAt",
            "--trainer.callbacks.step=12", f"--trainer.callbacks.path={tmp_path / 'paused.txt'}"]
    # the run waits at step 12 (last.ckpt holds step 10) until it is killed: no race with the machine's speed
    with open(tmp_path / "fit.log", "w") as log:
        proc = subprocess.Popen(args, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    last = ckdir / "last.ckpt"
    deadline = time.monotonic() + 600  # a generous bound for a busy machine; normally a few seconds
    while time.monotonic() < deadline and proc.poll() is None and not (tmp_path / "paused.txt").exists():
        time.sleep(0.2)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)  # a real kill, mid-epoch (an epoch is 47 batches)
    proc.wait()
    assert running and (tmp_path / "paused.txt").exists(), (tmp_path / "fit.log").read_text()[-2000:]
    saved = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved == 10
    args2 = [a if a != "400" else str(saved + 3) for a in args] + ["--ckpt_path", "last"]
    done = subprocess.run(args2, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    starts = [int(x) for x in (tmp_path / "starts.txt").read_text().split()]
    assert starts == [0, saved]  # the second run started at the saved step, not at 0
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == saved + 3


@pytest.mark.slow
def test_ddp_two_cpu_processes_see_disjoint_data(digits_root, tmp_path):
    rec = tmp_path / "rec"
    args = [ORDERLAB, "fit", "--config", DEBUG, *fit_args(digits_root, tmp_path, 6),
            "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.val_check_interval", "1000",
            "--trainer.callbacks+=probes.RecordBatches", f"--trainer.callbacks.folder={rec}",
            "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={tmp_path / 'ck'}",
            "--trainer.callbacks.every_n_train_steps=3"]
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [[ln.split()[1] for ln in (rec / f"rank{r}.txt").read_text().splitlines()] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 6 * 32
    assert not set(seen[0]) & set(seen[1]), "a sample reached both ranks"
    ckpts = sorted((tmp_path / "ck").glob("*step=6.ckpt"))
    assert ckpts, sorted(tmp_path.rglob("*.ckpt"))
    loaded = load_checkpoint(str(ckpts[-1]))
    assert loaded.config.num_tokens == 64
