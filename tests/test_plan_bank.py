"""Plan banks (orderlab.plan_bank, ``orderlab plans build``): the same plans as the schedule, drawn by seeded index,
every mismatch refused by name, and the bank's path and hash visible wherever it was used."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_fit_args
from helpers import tiny_model

from orderlab import get_schedule, seeding
from orderlab import plan_bank as pb
from orderlab.cli import main
from orderlab.decoding.decode import generate
from orderlab.plan import PlanError
from orderlab.plan_bank import Bank, build_bank, load, save
from orderlab.schedule import SCHEDULES, list_schedules

GOLDEN = json.loads((Path(__file__).parent / "golden" / "plans.json").read_text())

def test_bank_is_registered_but_not_listed():
    """"bank" plans from a file: get_schedule finds it, loops over list_schedules() skip it."""
    assert SCHEDULES.get("bank") is Bank and "bank" not in list_schedules()


def _reference(schedule, h, w, steps, i, seed=0, **knobs):
    return get_schedule(schedule, **knobs).plan(h, w, steps, seeding.generator(seed, "plan-bank", i))


def _bank_file(tmp_path, schedule="locality", h=8, w=8, steps=8, count=6, seed=0, name="bank.pt", **knobs):
    path = tmp_path / name
    save(build_bank(schedule, h, w, steps, count, seed=seed, knobs=knobs or None), path)
    return str(path)


def _refuses(match, fn, *args, **kwargs):
    with pytest.raises(PlanError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ the plans
@pytest.mark.parametrize("schedule, h, w, steps, knobs", [
    ("locality", 8, 8, 8, {}), ("locality", 7, 12, 10, {"repulsion": 1, "proximity": 0.5}),
    ("locality", 16, 16, 20, {"fill": "generated"}), ("locality", 5, 3, None, {}),
    ("random", 8, 8, 8, {}), ("random", 7, 12, None, {"sizes": "cosine"}), ("random", 16, 16, 20, {"sizes": "power:1.5"}),
])
def test_bank_plans_equal_the_schedules_plans(schedule, h, w, steps, knobs):
    bank = build_bank(schedule, h, w, steps, 5, seed=3, knobs=knobs)
    assert bank["orders"].shape == (5, h * w) and bank["orders"].dtype == torch.int16 and bank["count"] == 5
    for i in range(5):
        want = _reference(schedule, h, w, steps, i, seed=3, **knobs)
        got = pb.plan_at(bank, i)
        assert torch.equal(got.order, want.order) and got.sizes == want.sizes and got == want
    assert bank["num_steps"] == want.num_steps and bank["sizes"] == list(want.sizes)  # one shared size list
    assert (bank["schedule"], bank["steps"], bank["seed"], bank["stream"]) == (schedule, steps, 3, "plan-bank")
    assert bank["knobs"] == pb.bank_knobs(get_schedule(schedule, **knobs))


def test_plan_batch_is_used_when_the_schedule_has_one(monkeypatch):
    calls = []
    cls = type(get_schedule("random"))

    def plan_batch(self, height, width, steps, generators, known=None):
        calls.append(len(generators))
        return [self.plan(height, width, steps, g) for g in generators]

    monkeypatch.setattr(cls, "plan_batch", plan_batch, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bank = build_bank("random", 4, 4, 4, pb.CHUNK + 3)
        assert torch.get_num_threads() == 2  # planning ran on one thread; the count is restored
    finally:
        torch.set_num_threads(before)
    assert calls == [pb.CHUNK, 3]
    assert pb.plan_at(bank, pb.CHUNK + 2) == _reference("random", 4, 4, 4, pb.CHUNK + 2)


def _golden_groups():
    """Golden plans without known tokens, grouped by (schedule, knobs, grid, budget): {key: {seed: case}}."""
    groups: dict[str, dict[int, dict]] = {}
    for case in GOLDEN["plans"]:
        if case["schedule"] in ("locality", "random") and not case.get("known"):
            key = json.dumps([case[k] for k in ("schedule", "knobs", "height", "width", "steps")])
            groups.setdefault(key, {})[case["seed"]] = case
    return groups


def test_banks_reproduce_the_golden_plans(monkeypatch, tmp_path):
    """With plan i's generator swapped for the golden one (``manual_seed(i)``), a bank holds exactly the golden plans,
    and the bank schedule hands them back bit for bit."""
    monkeypatch.setattr(pb.seeding, "generator", lambda seed, stream, i: torch.Generator().manual_seed(i))
    groups = _golden_groups()
    assert sum(len(g) for g in groups.values()) >= 40
    for n, cases in enumerate(groups.values()):
        first = next(iter(cases.values()))
        bank = build_bank(first["schedule"], first["height"], first["width"], first["steps"], max(cases) + 1,
                          knobs=first["knobs"])
        path = save(bank, tmp_path / f"golden{n}.pt")
        loaded = load(path)
        for seed, case in cases.items():
            for b in (bank, loaded):
                plan = pb.plan_at(b, seed)
                assert plan.order.tolist() == case["order"] and list(plan.sizes) == case["sizes"], case
        # the schedule serves stored plan i for a generator whose draw is i
        sched = get_schedule("bank", path=path)
        for s in range(20):
            i = int(torch.randint(loaded["count"], (1,), generator=torch.Generator().manual_seed(s)))
            assert sched.plan(first["height"], first["width"], first["steps"], torch.Generator().manual_seed(s)) \
                == pb.plan_at(loaded, i)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    bank = build_bank("locality", 7, 12, 10, 4, seed=1, knobs={"repulsion": 1})
    loaded = load(save(bank, tmp_path / "b.pt"))
    assert torch.equal(loaded["orders"], bank["orders"]) and loaded["orders"].dtype == torch.int16
    assert {k: v for k, v in loaded.items() if k != "orders"} == {k: v for k, v in bank.items() if k != "orders"}
    assert loaded["sha256"] == pb.content_sha256(loaded) and len(loaded["sha256"]) == 64
    assert loaded["format"] == "orderlab-plan-bank-1" and loaded["orderlab_version"]


def test_wide_grids_store_int32_and_varying_sizes_are_kept_per_plan(monkeypatch):
    assert build_bank("raster", 200, 200, 5, 1)["orders"].dtype == torch.int32
    cls = type(get_schedule("random"))
    original = cls.plan

    def plan(self, height, width, steps=None, generator=None, known=None):  # sizes that vary per plan, same T
        p = original(self, height, width, steps, generator, known)
        if int(torch.randint(2, (1,), generator=generator)):
            return type(p)(order=p.order, sizes=tuple(reversed(p.sizes)), height=height, width=width)
        return p

    monkeypatch.setattr(cls, "plan", plan)
    bank = build_bank("random", 4, 4, 3, 8)
    assert isinstance(bank["sizes"][0], list) and len(bank["sizes"]) == 8
    lpd = tuple(get_schedule("random").plan(4, 4, 3).sizes)
    assert {tuple(s) for s in bank["sizes"]} == {lpd, lpd[::-1]} and lpd != lpd[::-1]
    assert all(pb.plan_at(bank, i).sizes == tuple(bank["sizes"][i]) for i in range(8))


def test_build_refuses_bad_input():
    for kwargs, needle in [(dict(count=0), "count=0"), (dict(height=0), "height=0"), (dict(steps=65), "steps=65"),
                           (dict(seed=1.5), "seed must be an int"), (dict(knobs={"repulson": 2}), "'repulson'")]:
        args = {"schedule": "locality", "height": 8, "width": 8, "steps": 8, "count": 2, **kwargs}
        with pytest.raises(ValueError, match=needle):
            build_bank(**args)
    with pytest.raises(ValueError, match="unknown schedule 'localty'"):
        build_bank("localty", 8, 8, 8, 2)


# ------------------------------------------------------------------------------------------- the bank schedule
def test_bank_schedule_draws_stored_plans_by_seeded_index(tmp_path):
    path = _bank_file(tmp_path, count=6)
    bank = load(path)
    sched = get_schedule("bank", path=path)
    drawn = set()
    for s in range(40):
        g = seeding.sample_generator(0, s)
        i = int(torch.randint(6, (1,), generator=seeding.sample_generator(0, s)))
        plan = sched.plan(8, 8, 8, g)
        assert plan == pb.plan_at(bank, i) == _reference("locality", 8, 8, 8, i)
        assert plan == sched.plan(8, 8, 8, seeding.sample_generator(0, s))  # same generator, same plan
        drawn.add(i)
    assert len(drawn) == 6  # different generators cover the bank
    assert sched.plan(8, 8, None, None) == sched.plan(8, 8, 8, torch.Generator().manual_seed(0))  # natural: its T
    assert sched.natural_steps(8, 8) == 8


def test_bank_schedule_decodes_like_its_plans(tmp_path):
    model = tiny_model(height=4, width=5)
    path = _bank_file(tmp_path, h=4, w=5, steps=4, count=3)
    labels = torch.tensor([0, 1, 2, 0])
    a, info = generate(model, get_schedule("bank", path=path), 4, labels, seed=7, first_index=2, return_info=True)
    assert torch.equal(a, generate(model, Bank(path=path), 4, labels, seed=7, first_index=2))
    bank = load(path)
    # sample i plans with sample_generator(seed, first_index + i): its first draw is the bank index
    for i, plan in enumerate(info.plans):
        j = int(torch.randint(3, (1,), generator=seeding.sample_generator(7, 2 + i)))
        assert plan == pb.plan_at(bank, j)
    with pytest.raises(PlanError, match="asked for steps=5"):
        generate(model, Bank(path=path), 5, labels)


def test_every_mismatch_is_refused_by_name(tmp_path):
    path = _bank_file(tmp_path, h=8, w=8, steps=8, repulsion=1)
    sched = Bank(path=path)
    _refuses(r"built for 8x8, asked for 16x16", sched.plan, 16, 16, 8)
    _refuses(r"built for 8x8, asked for 8x7", sched.plan, 8, 7, 8)
    _refuses(r"built for T=8 \(steps=8\), asked for steps=5", sched.plan, 8, 8, 5)
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[:4] = True
    _refuses(r"unconditional plans .*inpainting.*'locality'", sched.plan, 8, 8, 8, known=known)
    _refuses(r"holds 'locality' plans, asked for 'random'", Bank, path=path, schedule="random")
    msg = _refuses(r"built with locality repulsion=1, asked for repulsion=2", Bank, path=path, schedule="locality")
    assert path in msg
    _refuses(r"repulsion=1, asked for repulsion=4", Bank, path=path, knobs={"repulsion": 4})
    _refuses(r"fill='group', asked for fill='generated'", Bank, path=path, knobs={"repulsion": 1, "fill": "generated"})
    _refuses(r"has no knob 'repulson'", Bank, path=path, knobs={"repulson": 1})
    _refuses(r"has sha256 [0-9a-f]{12}, asked for 0000", Bank, path=path, sha256="0000")
    # the matching pins are accepted
    sha = load(path)["sha256"]
    Bank(path=path, schedule="locality", knobs={"repulsion": 1}, sha256=sha[:12])
    Bank(path=path, knobs={"repulsion": 1, "proximity": 1})  # 1 == 1.0
    _refuses(r"needs its knob path", Bank().plan, 8, 8, 8)


def test_files_that_are_not_banks_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    _refuses(r"junk.pt is not an orderlab plan bank", Bank, path=str(junk))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    _refuses(r"other.pt is not an orderlab plan bank \(format None", Bank, path=str(other))
    _refuses(r"does not exist", Bank, path=str(tmp_path / "missing.pt"))
    _refuses(r"is a folder", load, tmp_path)
    bank = build_bank("random", 4, 4, 4, 3)
    edited = dict(bank, orders=bank["orders"].flip(0))
    torch.save(edited, tmp_path / "edited.pt")
    _refuses(r"does not match its sha256", Bank, path=str(tmp_path / "edited.pt"))
    torch.save(dict(bank, orders=bank["orders"][:2]), tmp_path / "short.pt")
    _refuses(r"orders \(2, 16\), expected an int tensor of shape \(3, 16\)", load, tmp_path / "short.pt")


def test_rebuilt_file_is_read_again(tmp_path):
    path = _bank_file(tmp_path, "random", h=4, w=4, steps=4, count=2)
    first = repr(Bank(path=path))
    save(build_bank("random", 4, 4, 4, 2, seed=9), path)
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert repr(Bank(path=path)) != first and "seed=9" in repr(Bank(path=path))


# --------------------------------------------------------------------------------------- use is recorded
def test_repr_and_evaluation_rows_name_the_bank(tmp_path):
    from orderlab.analysis.evaluation import parse_row

    path = _bank_file(tmp_path, repulsion=1)
    short = load(path)["sha256"][:12]
    text = repr(get_schedule("bank", path=path))
    assert path in text and short in text and "locality" in text and "repulsion=1" in text and "8x8 T=8" in text
    row = parse_row({"schedule": "bank", "knobs": {"path": path, "sha256": short}})
    assert path in row.label and short in row.label
    with pytest.raises(ValueError, match="asked for 16x16"):
        get_schedule(row.schedule, **row.knobs).plan(16, 16, 8)
    with pytest.raises(ValueError, match="is not an orderlab plan bank|does not exist"):
        parse_row({"schedule": "bank", "knobs": {"path": str(tmp_path / "nope.pt")}})


@pytest.mark.slow
def test_evaluate_rows_draw_from_a_bank(tiny_ckpt, digits_root, tmp_path, capsys):
    path = _bank_file(tmp_path, steps=8, count=4)
    out = tmp_path / "eval"
    rows = yaml.safe_dump([{"schedule": "bank", "knobs": {"path": path}}], default_flow_style=True).strip()
    main(["evaluate", "--ckpt", tiny_ckpt, "--data", digits_root, "--rows", rows, "--num_samples", "8",
          "--nll_samples", "8", "--batch_size", "8", "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    text = json.dumps(result)
    assert path in text and "bank" in text


def test_training_draws_from_a_bank_and_the_checkpoint_names_it(digits_root, tmp_path):
    from orderlab.train.lightning_cli import run_lightning_cli

    path = _bank_file(tmp_path, steps=8, count=4)
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"train_schedule": {"class_path": "orderlab.plan_bank.Bank",
                                                                "init_args": {"path": path}}}}))
    debug = os.path.join(os.path.dirname(__file__), "..", "experiments", "debug.yaml")
    out = tmp_path / "fit"
    cli = run_lightning_cli(["fit", "--config", debug, *tiny_fit_args(digits_root, out, 2), "--config", str(cfg),
                             "--model.budgets", "[8]", "--trainer.logger.init_args.save_dir", str(out)])
    assert isinstance(cli.model.train_plans, Bank)
    ckpts = sorted(out.rglob("*.ckpt"))
    assert ckpts
    meta = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["orderlab"]
    assert path in meta["train_schedule"] and load(path)["sha256"][:12] in meta["train_schedule"]


# ------------------------------------------------------------------------------------------------------ the CLI
def test_plans_build_writes_a_bank_and_says_where(tmp_path, capsys):
    out = tmp_path / "bank.pt"
    main(["plans", "build", "--schedule", "locality", "--height", "8", "--width", "8", "--steps", "8", "--count", "5",
          "--seed", "2", "--knobs", "{repulsion: 1}", "--out", str(out)])
    printed = capsys.readouterr().out
    bank = load(out)
    assert str(out) in printed and bank["sha256"][:12] in printed and " s" in printed
    assert (bank["count"], bank["seed"], bank["knobs"]["repulsion"], bank["steps"]) == (5, 2, 1, 8)
    assert pb.plan_at(bank, 4) == _reference("locality", 8, 8, 8, 4, seed=2, repulsion=1)
    assert [p.name for p in tmp_path.iterdir()] == ["bank.pt"]  # no temporary file left behind


@pytest.mark.parametrize("args, needle", [
    (["build", "--count", "0"], "--count=0 must be an int >= 1"),
    (["build", "--height", "0"], "--height=0"),
    (["build", "--steps", "300"], "--steps=300 must be an int in 1..256 (N=256, the 16x16 grid)"),
    (["build", "--schedule", "localty"], "unknown schedule 'localty'; did you mean 'locality'?"),
    (["build", "--knobs", "{repulson: 2}"], "has no knob 'repulson'"),
    (["build", "--schedule", "bank"], "cannot be built from the 'bank' schedule"),
    (["biuld"], "unknown plans action 'biuld'; did you mean 'build'?"),
])
def test_plans_build_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as info:
        main(["plans", args[0], "--count", "2", *args[1:], "--out", str(tmp_path / "bank.pt")])  # later flags win
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("orderlab plans: error:")
    assert needle in err
    assert not list(tmp_path.iterdir())


def test_plans_build_needs_an_existing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["plans", "build", "--count", "2", "--out", str(tmp_path / "missing" / "bank.pt")])
    assert "folder" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_failed_build_leaves_an_older_bank_untouched(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bank.pt"
    main(["plans", "build", "--schedule", "random", "--height", "4", "--width", "4", "--count", "2", "--out", str(out)])
    before = out.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(SystemExit):
        main(["plans", "build", "--schedule", "random", "--height", "4", "--width", "4", "--count", "3", "--out",
              str(out)])
    assert "disk full" in capsys.readouterr().err
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["bank.pt"]
