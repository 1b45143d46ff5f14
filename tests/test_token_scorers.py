"""A dataset with a ground truth (ising) is evaluated exactly on the tokens, through the same evaluate path."""

import pytest

from orderlab.metrics.token_scorers import TOKEN_SCORERS, scorer_for


def test_registry_lists_ising_and_skips_feature_datasets():
    assert "ising" in TOKEN_SCORERS.names()
    assert scorer_for({"dataset": "digits"}) is None


@pytest.mark.slow
def test_evaluate_scores_ising_exactly_with_intervals_and_pairs_rows(tmp_path):
    from orderlab.analysis.evaluation import evaluate_row, load_context, parse_row
    from orderlab.analysis.uncertainty import compare_rows
    from orderlab.data.datasets import PrepareOptions, prepare_dataset
    from orderlab.train.lightning_cli import build_cli

    root = str(tmp_path / "ising")
    prepare_dataset("ising", root, PrepareOptions(size=4, limit=60, progress=False))
    cli = build_cli(["--data.root", root, "--data.num_workers=0", "--data.batch_size=8",
                     "--trainer.max_steps=2", "--trainer.accelerator=cpu", "--trainer.logger=false",
                     "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
                     "--trainer.limit_val_batches=1", "--model.backbone.vocab_size=2", "--model.backbone.height=4",
                     "--model.backbone.width=4", "--model.backbone.num_classes=1", "--model.backbone.depth=1",
                     "--model.backbone.dim=16", "--model.backbone.heads=2", "--model.budgets=[16, 4]",
                     "--model.label_dropout=0"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = str(tmp_path / "m.ckpt")
    cli.trainer.save_checkpoint(ckpt)
    ctx = load_context(ckpt, root)
    assert hasattr(ctx.extractor, "score_tokens")  # no classifier for ising: the exact scorer
    rows = [evaluate_row(ctx.loaded, parse_row(r), num_samples=10, real=ctx.real, extractor=ctx.extractor,
                         val_tokens=ctx.val_tokens, val_labels=ctx.val_labels, keep_items=True)
            for r in ("random:16", "random:4")]
    for r in rows:
        assert r["energy_low"] <= r["energy"] <= r["energy_high"]
        assert r["energy_bias"] == pytest.approx(r["energy"] - r["energy_exact"])
        assert r["nll_gap_low"] <= r["nll_gap"] <= r["nll_gap_high"] and r["kl_low"] <= r["kl"] <= r["kl_high"]
        assert len(r["items"]["energy"]) == 10 and "fcd" not in r
    same = compare_rows(rows[0], rows[0])
    assert same["energy_diff"] == 0.0 and same["energy_verdict"] == "no detectable difference"
    assert same["nll_diff"] == 0.0
    assert compare_rows(rows[1], rows[0])["n"] == 10
