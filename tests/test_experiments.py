"""Every YAML under experiments/ parses and runs a step or two on CPU with a tiny override (litgpt's habit)."""

from pathlib import Path

import pytest
import yaml
from conftest import tiny_fit_args

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for p in (ROOT / "experiments").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT / "experiments")) for p in YAMLS]


def kind(cfg: dict) -> str:
    if "arms" in cfg:
        return "study"
    if "space" in cfg:
        return "search"
    if "rows" in cfg:
        return "evaluate"
    if {"trainer", "model", "data"} <= set(cfg):
        return "fit"
    raise AssertionError(f"unknown experiment kind with keys {sorted(cfg)}")


def test_experiments_exist():
    names = set(IDS)
    for want in ("digits/base.yaml", "digits/orders.yaml", "digits/train_as_decode.yaml", "mnist/base.yaml",
                 "imagenet/arpg_l.yaml", "imagenet/lpd_l.yaml", "imagenet/arpg_l_eval_32.yaml",
                 "imagenet/arpg_l_eval_64.yaml", "imagenet/lpd_l_eval_20.yaml", "imagenet/lpd_l_eval_32.yaml", "debug.yaml", "search/digits_steps.yaml",
                 "search/digits_train.yaml"):
        assert want in names, want


def _tiny_converted(source: str, tmp_path) -> str:
    """A tiny ARPG / LPD checkpoint in the official layout (digits' 8x8 grid, 17 codes), converted."""
    import official_refs as ref

    from orderlab.published.convert import convert_checkpoint

    src = tmp_path / f"{source}.pt"
    if source == "arpg":
        ref.write_arpg_ckpt(src, ref.arpg_state(ref.ARPGConfig(vocab_size=17, num_classes=10, grid=8)))
    else:
        ref.write_lpd_ckpt(src, ref.lpd_state(ref.LPDConfig(vocab_size=17, num_classes=10, img_size=128)))
    convert_checkpoint(source, str(src), str(tmp_path / f"{source}.ckpt"), heads=2, grid=8)
    return str(tmp_path / f"{source}.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("path", YAMLS, ids=IDS)
def test_experiment_runs(path, digits_root, tiny_ckpt, tmp_path):
    cfg = yaml.safe_load(path.read_text())
    k = kind(cfg)
    if k == "fit":
        from orderlab.train.lightning_cli import run_lightning_cli

        extra = ["--trainer.logger.init_args.save_dir", str(tmp_path)] if isinstance(
            cfg["trainer"].get("logger"), dict) else []
        cli = run_lightning_cli(["fit", "--config", str(path), *tiny_fit_args(digits_root, tmp_path, 2), *extra])
        assert cli.trainer.global_step == 2
        # what the YAML chose beyond the tiny override is kept (arch, knobs, schedule)
        back = cfg["model"]["backbone"]
        for key in ("arch", "mutual", "block", "position", "options"):
            if key in back:
                assert getattr(cli.model.config, key) == back[key], key
    elif k == "evaluate":
        from orderlab.cli import main

        if any("native" in str(r) for r in cfg["rows"]):  # a converted published model's config: a tiny one of it
            tiny_ckpt = _tiny_converted(path.name.split("_")[0], tmp_path)
        main(["evaluate", "--config", str(path), "--ckpt", tiny_ckpt, "--out", str(tmp_path / "eval"),
              "--num_samples", "8", "--nll_samples", "8", "--data", digits_root])
        res = yaml.safe_load((tmp_path / "eval" / "results.json").read_text())
        assert len(res["rows"]) == len(cfg["rows"])
    elif k == "search":
        from orderlab.cli import main

        tiny = dict(cfg, out=str(tmp_path / "search"), n_trials=2)
        if cfg.get("kind", "inference") == "inference":  # the demo checkpoint's place -> the tiny one
            tiny["evaluate"] = {**cfg["evaluate"], "ckpt": tiny_ckpt, "data": digits_root, "num_samples": 8,
                                "nll_samples": 8}
        else:
            tiny["fit"] = {**cfg["fit"], "config": str(ROOT / cfg["fit"]["config"]),
                           "args": [*cfg["fit"].get("args", []), *tiny_fit_args(digits_root, tmp_path / "fit", 2)]}
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(tiny))
        main(["search", "--config", str(path)])
        res = yaml.safe_load((tmp_path / "search" / "trials.json").read_text())
        assert len(res["rows"]) == 2
        assert all(r["state"] in ("COMPLETE", "PRUNED") for r in res["rows"]), res["rows"]
    elif k == "study":
        _tiny_study(cfg, tmp_path)
    else:
        pytest.fail(f"no runner for experiment kind {k!r} ({path})")


def _tiny_study(cfg: dict, tmp_path) -> None:
    """The study as written, on a tiny model (2 steps), one seed, few samples and a small fresh dataset."""
    import csv

    from test_study import TINY_FIT

    from orderlab.cli import main

    data = {**cfg["data"], "root": str(tmp_path / "data"),
            "prepare": {**cfg["data"].get("prepare", {}), "limit": 120}}
    args = [*cfg["fit"].get("args", []), *TINY_FIT, "--model.backbone.depth=2"]  # decoupled needs 2 layers
    tiny = dict(cfg, out=str(tmp_path / "study"), seeds=1, data=data,
                fit={"config": str(ROOT / cfg["fit"]["config"]), "args": args},
                evaluate={**cfg.get("evaluate", {}), "num_samples": 12, "nll_samples": 6, "n_boot": 10})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny))
    main(["study", "--config", str(path)])
    with open(tmp_path / "study" / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(cfg["arms"]) * len(cfg["rows"])
    report = (tmp_path / "study" / "report.md").read_text()
    assert all(f["claim"] in report for f in cfg["findings"])  # claims with ": " are text, not YAML mappings
