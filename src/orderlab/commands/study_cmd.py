"""``orderlab study --config experiments/study/NAME.yaml``: train K models per arm, evaluate a grid of rows on each,
report every cell and comparison with its interval."""

from __future__ import annotations

from typing import Any


def study(*, name: str, data: dict[str, Any], fit: dict[str, Any], seeds: int | list[int], arms: dict[str, Any],
          rows: list[Any], metrics: list[str] | None = None, evaluate: dict[str, Any] | None = None,
          compare: list[dict[str, str]] | None = None, compare_to_full: bool = False,
          findings: list[dict[str, str]] | None = None, out: str | None = None, part: str | None = None,
          report: bool = True, threads: int | None = None) -> None:
    """Train K models per arm, evaluate the same rows on each, report means over seeds and paired differences.

    Every cell and comparison carries a 95 % interval. A killed study resumes: run the same command again and it
    skips every finished model and cell, continuing a model's training from its last saved state. Arms and seeds
    are independent jobs: ``--part 1/3``, ``--part 2/3`` and ``--part 3/3`` on three machines sharing ``out``, then
    one run without ``--part`` fills any gap and writes the report.

    Args:
        name: the study's name (the report's title; ``out`` defaults to runs/study/NAME).
        data: {dataset, root, prepare: {prepare options}}: prepared when the folder does not hold it yet.
        fit: {config: an `orderlab fit` YAML, args: ["--key=value", ...] shared by every arm}.
        seeds: training seeds per arm: a count K (seeds 0..K-1) or a list.
        arms: arm name -> dotted `orderlab fit` keys and values (a training recipe), e.g.
            {random: {}, locality8: {model.train_schedule: locality, model.budgets: [8]}}.
        rows: the (schedule, steps) rows evaluated on every model, e.g. [random:64, locality:8].
        metrics: what each cell reports and comparisons difference (fcd, nll_bits_per_token, energy, ...).
        evaluate: {num_samples, seed, n_boot, batch_size, split, nll_samples, level}.
        compare: paired differences a - b: {name, a: ROW, b: ROW} inside each model, or a: ARM/ROW across arms.
        compare_to_full: also compare every row with the same schedule at the largest budget (T = N).
        findings: claims read off comparisons: {claim, compare, metric, expect: better|worse|no_worse|no_better}.
        out: output folder (models, cells, report.md, tables, plots, TensorBoard).
        part: ``i/P``: run only every P-th (arm, seed) job starting at the i-th, for several machines.
        report: write report.md, the tables, plots and the TensorBoard summary from the finished cells.
        threads: torch CPU threads (default: torch's choice).
    """
    import os

    from orderlab.checks import check_positive_int
    from orderlab.study.runner import parse_part
    from orderlab.study.spec import parse_spec

    cfg = {"name": name, "data": data, "fit": fit, "seeds": seeds, "arms": arms, "rows": rows, "metrics": metrics,
           "evaluate": evaluate, "compare": compare, "compare_to_full": compare_to_full, "findings": findings,
           "out": out}
    spec = parse_spec({k: v for k, v in cfg.items() if v is not None})  # every key checked before any work
    parse_part(part)
    if threads is not None:
        import torch

        check_positive_int(threads, "threads")
        torch.set_num_threads(threads)
    from orderlab.study.runner import run_study

    jobs = spec.jobs()
    print(f"study {spec.name}: {len(spec.arms)} arm(s) x {len(spec.seeds)} seed(s) = {len(jobs)} model(s), "
          f"{len(spec.rows)} row(s) each -> {os.path.abspath(spec.out)}", flush=True)
    done = run_study(spec, part=part, report=report, say=lambda msg: print(msg, flush=True))
    print(f"done: {done['trained']} model(s) trained, {done['cells']} cell(s) evaluated in {done['seconds']:.0f} s"
          + (f"; report: {done['report']}" if done.get("report") else ""), flush=True)
