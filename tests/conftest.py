"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread_session():
    """Tests use tiny models: one intra-op thread is faster than two spin-waiting ones on a loaded 2-core box."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread, then restore the count.

    Schedule planning and plan metrics are many tiny tensor ops; on a loaded 2-core machine (CI) OpenMP threads
    spin-wait for each other and make them up to 10x slower. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """The sklearn digits dataset prepared once per test session (about 2 s)."""
    from orderlab.data.datasets import PrepareOptions, prepare_dataset

    root = str(tmp_path_factory.mktemp("data") / "digits")
    prepare_dataset("digits", root, PrepareOptions(seed=0, progress=False), overwrite=True)
    return root


# a tiny backbone and a short CPU run: appended to any fit config by the tests
def tiny_fit_args(root, out, steps=2):
    return ["--data.root", str(root), "--data.num_workers", "0", "--trainer.default_root_dir", str(out),
            "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "1", "--trainer.val_check_interval",
            "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
            "--trainer.strategy", "auto",
            "--model.backbone.preset", "null", "--model.backbone.depth", "2", "--model.backbone.dim", "16",
            "--model.backbone.heads", "2", "--model.backbone.height", "8", "--model.backbone.width", "8",
            "--model.backbone.vocab_size", "17", "--model.backbone.num_classes", "10", "--model.budgets", "[8, 4]",
            "--model.warmup_steps", "1"]


@pytest.fixture(scope="session")
def tiny_ckpt(digits_root, tmp_path_factory):
    """A checkpoint of a tiny digits model trained for 3 steps by ``orderlab fit``."""
    from pathlib import Path

    from orderlab.lightning_cli import run_lightning_cli

    out = tmp_path_factory.mktemp("fit")
    cfg = Path(__file__).resolve().parents[1] / "experiments" / "debug.yaml"
    run_lightning_cli(["fit", "--config", str(cfg), *tiny_fit_args(digits_root, out, 3),
                       "--trainer.logger.init_args.save_dir", str(out)])
    ckpts = sorted(Path(out).rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    return str(ckpts[-1])
