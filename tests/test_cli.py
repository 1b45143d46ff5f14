"""Bad input to any ``orderlab`` command: one ``error:`` line naming the value, exit code 2, no traceback, and nothing
left behind. Also ``orderlab --help`` / ``--version`` and "did you mean" for mistyped keys."""

import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_fit_args
from helpers import UNKNOWN

from orderlab.cli import LIGHTNING_COMMANDS, main, subcommands

ROOT = Path(__file__).resolve().parents[1]
DEBUG_YAML = str(ROOT / "experiments" / "debug.yaml")


def fails(argv, capsys, *needles):
    """Run ``orderlab argv`` in-process: exit code 2, exactly one ``error:`` line holding every needle, no traceback.

    Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if "error:" in ln]
    assert exc.value.code == 2, (exc.value.code, cap.err[-2000:])
    assert len(lines) == 1, cap.err[-2000:]
    assert "Traceback" not in cap.err + cap.out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def fit_args(root, out):
    return ["fit", "--config", DEBUG_YAML, *tiny_fit_args(root, out), "--trainer.logger.init_args.save_dir", out]


@pytest.fixture(scope="session")
def grid7_root(tmp_path_factory):
    """A tiny prepared MNIST-like dataset on a 7x7 grid (a digits checkpoint's grid is 8x8), via the project's writer."""
    from orderlab.data.datasets import Prepared, write_dataset

    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 17, (n, 7, 7)), np.arange(n) % 10) for s, n in (("train", 40), ("val", 20))}
    root = str(tmp_path_factory.mktemp("grid7") / "mnist7")
    write_dataset(root, Prepared(splits=splits, vocab_size=17, num_classes=10,
                                 tokenizer={"name": "pixel", "levels": 17, "height": 7, "width": 7, "channels": 1},
                                 source={"test": "7x7"}), "mnist", num_shards=2)
    return root


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a checkpoint\n" * 5)
    return str(path)


# ------------------------------------------------------------------------------------------------ the rows
@pytest.mark.parametrize("num", ["0", "-5"])
def test_sample_num_below_one(tiny_ckpt, tmp_path, capsys, num):
    fails(["sample", "--ckpt", tiny_ckpt, "--num", num, "--out", tmp_path / "o" / "s.png"], capsys, f"--num={num}")
    assert not (tmp_path / "o").exists()


def test_evaluate_negative_num_samples_leaves_no_folder(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    fails(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[random:4]", "--num_samples", "-3", "--out", out], capsys,
          "--num_samples=-3")
    assert not out.exists()


def test_failed_evaluate_removes_the_folder_it_made(tiny_ckpt, digits_root, tmp_path, capsys):
    out = tmp_path / "eval"  # the row fails while sampling, after the folder was made
    fails(["evaluate", "--ckpt", tiny_ckpt, "--data", digits_root, "--rows", "[random:999]", "--num_samples", "4",
           "--out", out], capsys, "steps=999")
    assert not out.exists()
    out.mkdir()  # a folder that was there before is left (with what it held)
    (out / "mine.txt").write_text("keep")
    fails(["evaluate", "--ckpt", tiny_ckpt, "--data", digits_root, "--rows", "[random:999]", "--num_samples", "4",
           "--out", out], capsys, "steps=999")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_fit_missing_ckpt_path(digits_root, tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "runs" / "nope.ckpt"
    fails([*fit_args(digits_root, out), "--ckpt_path", missing], capsys, f"ckpt_path='{missing}' does not exist")
    assert not out.exists()


def _damage(root: Path, how: str) -> str:
    name = "train-000003.tar"
    path = root / name
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(2000)
    elif how == "corrupted":
        data = bytearray(path.read_bytes())
        data[600:640] = b"x" * 40
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    return str(path)


@pytest.mark.parametrize("how, needle", [("truncated", "truncated?"), ("corrupted", "checksum mismatch"),
                                         ("missing", "is missing")])
def test_fit_bad_shard_is_one_line_before_training(digits_root, tmp_path, capsys, how, needle):
    root = tmp_path / "digits"
    shutil.copytree(digits_root, root)
    shard = _damage(root, how)
    out = tmp_path / "run"
    fails(fit_args(root, out), capsys, shard, needle)
    assert not out.exists()  # checked before the trainer made any folder


def test_fit_shard_that_breaks_while_training_is_one_line(digits_root, tmp_path, capsys):
    root = tmp_path / "digits"  # checksums off: the damage is only seen when the shard is read
    shutil.copytree(digits_root, root)
    for name in ("train-000000.tar", "val-000000.tar"):
        data = bytearray((root / name).read_bytes())
        for i in range(0, len(data) - 512, 512):
            data[i + 148:i + 156] = b"zzzzzzzz"  # every tar header's checksum field
        (root / name).write_bytes(bytes(data))
    fails([*fit_args(root, tmp_path / "run"), "--data.verify_checksums", "false"], capsys, "corrupt or truncated")


@pytest.mark.parametrize("flag, value, needle", [
    ("--cfg", "-1", "--cfg=-1.0"), ("--temperature", "-0.5", "--temperature=-0.5"), ("--top_k", "-1", "--top_k=-1"),
    ("--top_p", "0", "--top_p=0.0"), ("--top_p", "1.5", "--top_p=1.5"), ("--cfg_schedule", UNKNOWN, f"'{UNKNOWN}'"),
])
def test_sample_bad_sampling_knob(tiny_ckpt, tmp_path, capsys, flag, value, needle):
    fails(["sample", "--ckpt", tiny_ckpt, flag, value, "--num", "2", "--out", tmp_path / "s.png"], capsys, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag, value, needle", [("--cfg_scale", "-1", "--cfg_scale=-1.0"),
                                                 ("--temperature", "-1", "--temperature=-1.0"),
                                                 ("--top_p", "2", "--top_p=2.0")])
def test_evaluate_bad_sampling_knob(tiny_ckpt, tmp_path, capsys, flag, value, needle):
    out = tmp_path / "eval"
    fails(["evaluate", "--ckpt", tiny_ckpt, "--rows", "[random:4]", flag, value, "--out", out], capsys, needle)
    assert not out.exists()


def test_sampling_knobs_accept_their_edges():
    from orderlab.decoding.sampling import check_sampling_args

    check_sampling_args(cfg_scale=0.0, temperature=0.0, top_k=0, top_p=1.0, cfg_schedule="linear")  # all legal
    with pytest.raises(ValueError, match="cfg_scale=nan"):
        check_sampling_args(cfg_scale=float("nan"))


def test_search_bad_sampling_knob_is_named(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "search"
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"space": {"schedule": {"type": "categorical", "choices": ["random"]},
                                             "cfg_scale": {"type": "float", "low": -1.0, "high": 2.0}},
                                   "evaluate": {"ckpt": tiny_ckpt, "num_samples": 4}, "out": str(out)}))
    fails(["search", "--config", cfg], capsys, "space.cfg_scale.low=-1.0")
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["sample", "evaluate", "fit"])
def test_text_file_as_checkpoint(tiny_ckpt, digits_root, text_file, tmp_path, capsys, cmd):
    argv = {"sample": ["sample", "--ckpt", text_file, "--out", tmp_path / "s.png"],
            "evaluate": ["evaluate", "--ckpt", text_file, "--rows", "[random:4]", "--out", tmp_path / "e"],
            "fit": [*fit_args(digits_root, tmp_path / "run"), "--ckpt_path", text_file]}[cmd]
    line = fails(argv, capsys, text_file, "is not an orderlab checkpoint")
    assert "Memo value" not in line and len(line) < 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_evaluate_names_a_grid_mismatch(tiny_ckpt, grid7_root, tmp_path, capsys):
    out = tmp_path / "eval"
    fails(["evaluate", "--ckpt", tiny_ckpt, "--data", grid7_root, "--rows", "[random:4]", "--num_samples", "4",
           "--out", out], capsys, "8x8 does not match the data grid 7x7", grid7_root)
    assert not out.exists()


def test_search_grid_mismatch_fails_before_the_study(tiny_ckpt, grid7_root, tmp_path, capsys):
    out = tmp_path / "search"
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"space": {"schedule": {"type": "categorical", "choices": ["random"]}},
                                   "fixed": {"steps": 4}, "n_trials": 2,
                                   "evaluate": {"ckpt": tiny_ckpt, "data": grid7_root, "num_samples": 4},
                                   "out": str(out)}))
    fails(["search", "--config", cfg], capsys, "does not match the data grid 7x7")
    assert not out.exists()  # no study.db, no empty table


def test_schedules_steps_beyond_n(tmp_path, capsys):
    fails(["schedules", "--height", "8", "--width", "8", "--steps", "100", "--out", tmp_path / "s"], capsys,
          "--steps 100 is outside 1..N=64")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------- every subcommand, always
def _bad_values(cmd, tmp, ckpt, root):
    """One semantically bad value per subcommand (a new subcommand must add its own: see the test below)."""
    missing = str(tmp / "nope.ckpt")
    table = {
        "schedules": ["--height", "8", "--width", "8", "--steps", "100", "--out", tmp / "out"],
        "prepare": ["digits", "--out", tmp / "out", "--num_shards", "0"],
        "bench": ["decode", "--repeats", "0", "--out", tmp / "out"],
        "plans": ["build", "--count", "0", "--out", tmp / "out" / "bank.pt"],
        "convert": ["--from", "arpg", "--ckpt", ckpt, "--out", tmp / "out" / "x.ckpt"],  # an orderlab file
        "evaluate": ["--ckpt", ckpt, "--rows", "[random:4]", "--num_samples", "-3", "--out", tmp / "out"],
        "sample": ["--ckpt", ckpt, "--num", "0", "--out", tmp / "out" / "s.png"],
        "demo": ["--num_samples", "-3", "--out", tmp / "out", "--data", root],
        "search": ["--space", "{}", "--out", tmp / "out"],
        "study": ["--name", "x", "--data", f"{{dataset: digits, root: {root}}}", "--fit", "{config: nope.yaml}",
                  "--seeds", "1", "--arms", "{a: {}}", "--rows", "[random:4]", "--out", tmp / "out"],
        "fit": [*fit_args(root, tmp / "out")[1:], "--ckpt_path", missing],
        "validate": ["--config", DEBUG_YAML, *tiny_fit_args(root, tmp / "out"), "--ckpt_path", missing],
        "test": ["--config", DEBUG_YAML, *tiny_fit_args(root, tmp / "out"), "--ckpt_path", missing],
    }
    return table.get(cmd)


@pytest.mark.parametrize("cmd", subcommands())
def test_every_subcommand_bad_value_is_one_line(cmd, tiny_ckpt, digits_root, tmp_path, capsys):
    args = _bad_values(cmd, tmp_path, tiny_ckpt, digits_root)
    assert args is not None, f"add a bad value for the new subcommand {cmd!r} to _bad_values"
    fails([cmd, *args], capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cmd", subcommands())
def test_every_subcommand_unknown_option_is_one_line(cmd, tmp_path, capsys):
    fails([cmd, "--no_such_option", "1"], capsys)
    assert not list(tmp_path.iterdir())


def test_unknown_command(capsys):
    fails(["schedulez"], capsys, "'schedulez'", "did you mean 'schedules'?")


# --------------------------------------------------------------------------------------------- --help and --version
def test_help_describes_every_subcommand(capsys):
    main(["--help"])
    text = capsys.readouterr().out
    for cmd in subcommands():
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(cmd + " ")), None)
        assert line is not None and len(line.split(None, 1)[1]) > 10, (cmd, text)
    assert "LightningCLI" in text and all(c in text for c in LIGHTNING_COMMANDS) and "--version" in text


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"orderlab {version('orderlab')}"


# ------------------------------------------------------------------------------------------------- did you mean
def test_closest():
    from orderlab.suggest import closest

    keys = ["trainer.max_steps", "trainer.max_time", "model.lr", "data.root"]
    assert closest("trainer.max_step", keys) == "trainer.max_steps"
    assert closest("modl.lr", keys) == "model.lr"
    assert closest("zzz.qqq", keys) is None


@pytest.mark.parametrize("extra, needle", [
    (["--trainer.max_step", "3"], "did you mean '--trainer.max_steps'?"),  # no prefix matching: a typo, not a prefix
    (["--trainer.max_step=3"], "did you mean '--trainer.max_steps'?"),
    (["--model.backbone.dpth", "3"], "did you mean 'depth'?"),
])
def test_fit_command_line_typo(digits_root, tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    fails([*fit_args(digits_root, out), *extra], capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("config, needle", [
    ({"trainer": {"max_step": 3}}, "'trainer.max_step'; did you mean 'trainer.max_steps'?"),
    ({"model": {"lrr": 0.1}}, "did you mean 'model.lr'?"),
    ({"model": {"train_schedule": {"class_path": "orderlab.schedules.locality.Locality",
                                   "init_args": {"repulsin": 2}}}}, "'repulsin'"),
])
def test_fit_yaml_typo(digits_root, tmp_path, capsys, config, needle):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    line = fails([*fit_args(digits_root, out), "--config", cfg], capsys, needle)
    assert "did you mean" in line
    assert not out.exists()


@pytest.mark.parametrize("config, needle", [
    ({"n_trial": 3}, "did you mean 'n_trials'?"),
    ({"evaluate": {"num_sample": 3}}, "evaluate.num_sample: unknown key; did you mean 'num_samples'?"),
    ({"space": {"steps": {"type": "int", "lo": 1, "high": 4}}}, "space.steps.lo: unknown key for a int parameter"),
    ({"space": {"steps": {"type": "int", "lo": 1, "high": 4}}}, "did you mean 'low'?"),
    ({"space": {"temprature": {"type": "float", "low": 0.5, "high": 1.0}}}, "did you mean 'temperature'?"),
])
def test_search_yaml_typo(tiny_ckpt, tmp_path, capsys, config, needle):
    base = {"space": {"schedule": {"type": "categorical", "choices": ["random"]}},
            "evaluate": {"ckpt": tiny_ckpt}, "out": str(tmp_path / "out")}
    for key, value in config.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(base))
    fails(["search", "--config", cfg], capsys, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, needle", [
    ({"num_sample": 3}, "did you mean 'num_samples'?"),
    ({"rows": [{"schedule": "locality", "stepz": 8}]}, "'stepz'; did you mean 'steps'?"),
    ({"rows": [{"schedule": "locality", "knobs": {"fil": "group"}}]}, "'fil'; did you mean 'fill'?"),
    ({"rows": ["localty:8"]}, "'localty'; did you mean 'locality'?"),
])
def test_evaluate_yaml_typo(tiny_ckpt, tmp_path, capsys, config, needle):
    cfg = tmp_path / "orders.yaml"
    cfg.write_text(yaml.safe_dump({"rows": ["random:4"], "out": str(tmp_path / "out"), **config}))
    fails(["evaluate", "--config", cfg, "--ckpt", tiny_ckpt], capsys, needle)
    assert not (tmp_path / "out").exists()
