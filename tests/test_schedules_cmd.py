"""``orderlab schedules`` and what it reports: the locality metrics of a Plan and the picture of its order."""

import importlib
import itertools
import json
import math

import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from orderlab import Plan, get_schedule, list_schedules, plan_metrics
from orderlab.analysis.pictures import _boundaries, plot_plan
from orderlab.cli import main
from orderlab.seeding import sample_generator

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
metrics_mod = importlib.import_module("orderlab.plan_metrics")  # the package attribute is the function

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_force_metrics(plan: Plan) -> dict[str, float]:
    """The §6 definitions, written out with plain loops (the slow, obvious reading)."""
    w, step = plan.width, plan.step_of.tolist()
    cells = [(p, divmod(p, w)) for p in range(plan.num_tokens)]
    near, nbrs = [], []
    for p, (r, c) in cells:
        if step[p] < 0:
            continue
        seen = [(r2, c2) for q, (r2, c2) in cells if step[q] < step[p]]
        if seen:  # the first group with nothing known sees nothing: skipped
            near.append(min(math.dist((r, c), x) for x in seen))
            nbrs.append(sum(max(abs(r - r2), abs(c - c2)) == 1 for r2, c2 in seen))
    pairs, mins = 0, []
    for g in plan.groups:
        xy = [divmod(int(p), w) for p in g]
        pairs += sum(max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1 for a, b in itertools.combinations(xy, 2))
        if len(xy) >= 2:
            mins.append(min(math.dist(a, b) for a, b in itertools.combinations(xy, 2)))
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {"steps": float(plan.num_steps), "nearest_dist": mean(near), "generated_neighbours": mean(nbrs),
            "adjacent_pairs": float(pairs), "min_intra_dist": mean(mins)}


def same(a: float, b: float | None) -> bool:
    if b is None or math.isnan(b):
        return math.isnan(a)
    return a == pytest.approx(b, abs=1e-9)


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_by_hand():
    # 2x2: step 0 = (0,0), step 1 = (1,1), step 2 = (0,1) and (1,0)
    m = plan_metrics(Plan.from_groups([[0], [3], [1, 2]], 2, 2))
    assert list(m) == ["steps", *metrics_mod.METRIC_NAMES]
    assert m["steps"] == 3.0
    assert m["nearest_dist"] == pytest.approx((math.sqrt(2) + 1 + 1) / 3)
    assert m["generated_neighbours"] == pytest.approx((1 + 2 + 2) / 3)
    assert m["adjacent_pairs"] == 1.0  # (0,1)-(1,0) are diagonal neighbours
    assert m["min_intra_dist"] == pytest.approx(math.sqrt(2))


def test_metrics_count_known_cells_as_context():
    # 1x3 with the middle known: both ends see it at step 0, so nothing is skipped
    plan = Plan(order=torch.tensor([1, 0, 2]), sizes=(2,), height=1, width=3, num_known=1)
    m = plan_metrics(plan)
    assert m["nearest_dist"] == 1.0 and m["generated_neighbours"] == 1.0
    assert m["adjacent_pairs"] == 0.0 and m["min_intra_dist"] == 2.0


def test_metrics_undefined_means_are_nan():
    m = plan_metrics(get_schedule("raster").plan(1, 1))
    assert math.isnan(m["nearest_dist"]) and math.isnan(m["generated_neighbours"]) and m["adjacent_pairs"] == 0
    assert math.isnan(plan_metrics(get_schedule("raster").plan(3, 3, 9))["min_intra_dist"])  # all groups of one


@pytest.mark.parametrize("name", list_schedules())
@pytest.mark.parametrize("h, w, steps", [(5, 7, 6), (1, 9, None), (6, 6, 36), (4, 9, 1)])
def test_metrics_match_the_definitions(name, h, w, steps, monkeypatch):
    known = torch.zeros(h, w, dtype=torch.bool)
    known[h // 2, : w // 2] = True
    monkeypatch.setattr(metrics_mod, "_CHUNK", 5)  # exercise the blocked pairwise path
    m = h * w - int(known.sum())
    for kn, t in ((None, steps), (known, None if steps is None else min(steps, m))):
        plan = get_schedule(name).plan(h, w, t, torch.Generator().manual_seed(1), known=kn)
        got, want = plan_metrics(plan), brute_force_metrics(plan)
        assert got.keys() == want.keys()
        assert all(same(got[k], want[k]) for k in want), (got, want)


def test_metrics_32x32_one_token_per_step():
    m = plan_metrics(get_schedule("random").plan(32, 32, 1024, torch.Generator().manual_seed(0)))
    assert m["steps"] == 1024 and m["adjacent_pairs"] == 0 and math.isnan(m["min_intra_dist"])
    assert 1.0 <= m["nearest_dist"] < 1.5


# ------------------------------------------------------------------------------------------------ pictures
def test_plot_plan_writes_a_png_atomically(tmp_path):
    target = tmp_path / "new" / "dir" / "raster.png"
    assert plot_plan(get_schedule("raster").plan(8, 8, 5), target) == str(target)
    first = target.read_bytes()
    assert first.startswith(PNG_MAGIC)
    plot_plan(get_schedule("lshape").plan(8, 8), target, title="again")  # overwrite in place
    assert target.read_bytes().startswith(PNG_MAGIC) and target.read_bytes() != first
    assert [p.name for p in target.parent.iterdir()] == ["raster.png"]  # no temporary file left behind


@pytest.mark.parametrize("h, w", [(1, 1), (1, 9), (32, 32)])
def test_plot_plan_odd_grids(tmp_path, h, w):
    plot_plan(get_schedule("random").plan(h, w), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_plan_on_an_axes_shows_the_step_map():
    ax = Figure().add_subplot()
    known = torch.zeros(4, 4, dtype=torch.bool)
    known[0] = True
    plan = get_schedule("diagonal").plan(4, 4, known=known)
    assert plot_plan(plan, ax, title="diag") is ax and isinstance(ax, Axes)
    assert ax.get_title() == "diag"
    shown = ax.get_images()[0].get_array()
    assert torch.equal(torch.as_tensor(shown.data), plan.step_map())
    assert [t.get_text() for t in ax.texts][:4] == ["K"] * 4  # known cells are marked


def test_boundaries_follow_group_edges():
    rows = Plan.from_groups([[0, 1, 2], [3, 4, 5]], 2, 3)  # one group per row: only the horizontal edges
    segs = _boundaries(rows.step_map().numpy())
    assert sorted(segs) == [((-0.5, 0.5), (0.5, 0.5)), ((0.5, 0.5), (1.5, 0.5)), ((1.5, 0.5), (2.5, 0.5))]
    cols = Plan.from_groups([[0, 2], [1, 3]], 2, 2)
    assert sorted(_boundaries(cols.step_map().numpy())) == [((0.5, -0.5), (0.5, 0.5)), ((0.5, 0.5), (0.5, 1.5))]


# ------------------------------------------------------------------------------------------------ command
def test_schedules_command_writes_pictures_and_tables(tmp_path, capsys):
    main(["schedules", "--height", "8", "--width", "8", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    names = list_schedules()
    for name in names:
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
        assert name in printed
    md = (tmp_path / "schedules.md").read_text()
    assert md.count("\n| ") == len(names) + 1 and all(f"| {n} |" in md for n in names)
    # what users read points at nothing outside the repository
    assert not any(outside in md + printed for outside in ("references/", "../shared", "/work/"))
    report = json.loads((tmp_path / "schedules.json").read_text())
    assert (report["height"], report["width"], report["steps"], report["seed"]) == (8, 8, None, 0)
    assert [row["name"] for row in report["schedules"]] == names
    for row in report["schedules"]:
        plan = get_schedule(row["name"]).plan(8, 8, None, sample_generator(0, 0))  # sample 0's plan
        assert row["steps"] == plan.num_steps and row["sizes"] == list(plan.sizes)
        want = plan_metrics(plan)
        assert row["metrics"].keys() == want.keys()
        assert all(same(want[k], row["metrics"][k]) for k in want), row["name"]


def test_schedules_command_budget_and_seed(tmp_path):
    main(["schedules", "--height", "6", "--width", "5", "--steps", "4", "--seed", "3", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "schedules.json").read_text())
    assert report["steps"] == 4 and {row["steps"] for row in report["schedules"]} == {4}
    row = next(r for r in report["schedules"] if r["name"] == "random")
    plan = get_schedule("random").plan(6, 5, 4, sample_generator(3, 0))
    assert row["metrics"]["adjacent_pairs"] == plan_metrics(plan)["adjacent_pairs"]
    assert "T=4" in (tmp_path / "schedules.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--steps", "65"], "--steps 65 is outside 1..N=64"),
    (["--steps", "0"], "--steps 0 is outside 1..N=64"),
    (["--height", "0"], "--height=0 must be an int >= 1"),
])
def test_schedules_command_bad_input_is_one_clear_line(tmp_path, args, needle, capsys):
    argv = ["schedules", "--height", "8", "--width", "8", "--out", str(tmp_path), *args]
    with pytest.raises(SystemExit) as err:
        main(argv)
    message = capsys.readouterr().err
    assert err.value.code == 2 and message.startswith("orderlab schedules: error: ") and needle in message
    assert message.count("\n") == 1
    assert not list(tmp_path.iterdir())  # checked before any work


def test_unknown_command_lists_choices(capsys):
    with pytest.raises(SystemExit) as err:
        main(["schedulez"])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "'schedulez'" in message and "schedules" in message
