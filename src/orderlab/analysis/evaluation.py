"""Evaluate a trained model under several (schedule, steps) rows: FCD/FID, KID, precision/recall, per-order NLL,
forward passes and wall time per image, plus a sample grid per row.

One function, :func:`evaluate_row`, is the code path of ``orderlab evaluate``, the demo report and the Optuna
objective, so every number a study optimises is the number the report shows. Every number comes with its 95 %
interval (:mod:`orderlab.analysis.uncertainty`), and :func:`write_table` shows it beside the number.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from orderlab.analysis.uncertainty import DEFAULT_N_BOOT, INTERVAL_KEYS, PLUGIN_KEYS, row_intervals
from orderlab.data.atomic import atomic_write_bytes
from orderlab.decoding.decode import generate
from orderlab.decoding.scoring import token_logprobs
from orderlab.schedule import get_schedule
from orderlab.seeding import sample_generator

__all__ = ["Row", "parse_row", "evaluate_row", "nll_bits", "nll_bits_per_image", "write_table", "fmt_interval",
           "image_grid", "save_grid", "TABLE_KEYS", "EvalContext", "load_context", "load_eval_data"]


@dataclass
class Row:
    """One evaluated setting: a schedule (registered name + knobs), a step budget and a decoder."""

    schedule: str
    steps: int | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    decoder: str = "plan"
    decoder_args: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))
        dec = "" if self.decoder == "plan" else f" [{self.decoder}]"
        return f"{self.schedule}{'(' + knobs + ')' if knobs else ''}{dec} T={self.steps if self.steps else 'natural'}"

    @property
    def slug(self) -> str:
        """A filesystem-safe name with every setting: ``locality_T8_repulsion1``, ``raster_Tnat_sjd_window4``."""
        parts = [self.schedule, f"T{self.steps if self.steps else 'nat'}"]
        parts += [f"{k}{_safe(v)}" for k, v in sorted(self.knobs.items())]
        if self.decoder != "plan":
            parts += [self.decoder] + [f"{k}{_safe(v)}" for k, v in sorted(self.decoder_args.items())]
        return "_".join(_safe(p) for p in parts)


def _safe(value: Any) -> str:
    """Letters, digits, '.', '_', '-' only (every other run of characters becomes one '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-.") or "x"


_ROW_RE = re.compile(r"^(?P<name>[A-Za-z_][\w-]*)(?::(?P<steps>\d+))?$")


def parse_row(spec: str | dict | Row) -> Row:
    """``"locality:8"``, ``"raster"`` (natural budget) or ``{schedule, steps, knobs, decoder, decoder_args}``;
    ``native`` (a converted published model's own decoding) is kept as it is until its checkpoint is loaded."""
    if isinstance(spec, Row):
        return spec
    if isinstance(spec, str):
        m = _ROW_RE.match(spec.strip())
        if not m:
            raise ValueError(f"row {spec!r} is not 'schedule' or 'schedule:steps' (e.g. 'locality:8')")
        spec = {"schedule": m["name"], "steps": int(m["steps"]) if m["steps"] else None}
    if not isinstance(spec, dict):
        raise ValueError(f"row {spec!r} must be a string like 'random:8' or a mapping")
    unknown = sorted(set(spec) - {f for f in Row.__dataclass_fields__})
    if unknown:
        from orderlab.suggest import did_you_mean

        keys = sorted(Row.__dataclass_fields__)
        raise ValueError(f"row {spec!r} has unknown key {unknown[0]!r}{did_you_mean(unknown[0], keys)} (keys are {keys})")
    row = Row(**spec)
    if row.schedule == "native" and not row.knobs:  # resolved from the checkpoint (orderlab convert) once loaded
        return row
    try:
        get_schedule(row.schedule, **row.knobs)  # unknown name or knob fails here, naming it
    except TypeError as err:  # a knob the schedule lacks: bad input, like an unknown name
        raise ValueError(f"row {row.label}: {err}") from None
    return row


def nll_bits_per_image(model, tokens: torch.Tensor, labels: torch.Tensor, row: Row, seed: int = 0,
                       batch_size: int = 256) -> np.ndarray:
    """(B,) float64: bits per token of each held-out (B, H, W) image under ``row``'s plans (teacher forcing, one
    forward per batch); entry i is image i, scored under the plan of ``sample_generator(seed, i)``, so the entries
    of two rows (or two models) with the same seed are paired by image."""
    cfg = model.config
    schedule = get_schedule(row.schedule, **row.knobs)
    out = np.empty(tokens.shape[0], dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, tokens.shape[0], batch_size):
            tok, lab = tokens[s:s + batch_size], labels[s:s + batch_size]
            plans = [schedule.plan(cfg.height, cfg.width, row.steps, sample_generator(seed, s + i))
                     for i in range(tok.shape[0])]
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(plans):  # a schedule may vary its sizes per sample: score each size list apart
                groups.setdefault(p.sizes, []).append(i)
            for idx in groups.values():
                lp = token_logprobs(model, lab[idx], tok[idx], [plans[i] for i in idx])  # (b, N)
                out[[s + i for i in idx]] = (-lp.double().mean(1) / math.log(2)).cpu().numpy()
    return out


def nll_bits(model, tokens: torch.Tensor, labels: torch.Tensor, row: Row, seed: int = 0,
             batch_size: int = 256) -> float:
    """Bits per token of held-out (B, H, W) tokens under ``row``'s plans: the mean of :func:`nll_bits_per_image`
    (every image has the same number of tokens)."""
    per_image = nll_bits_per_image(model, tokens, labels, row, seed, batch_size)
    return float(per_image.mean()) if per_image.size else 0.0


def evaluate_row(loaded, row: Row, *, num_samples: int, real, extractor, val_tokens: torch.Tensor | None = None,
                 val_labels: torch.Tensor | None = None, batch_size: int = 256, cfg_scale: float = 1.0,
                 cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, cache_dir: str | None = None, grid_path: str | None = None,
                 precision: str = "fp32", progress: Callable[[str, int], None] | None = None,
                 ref_stats=None, n_boot: int = DEFAULT_N_BOOT, keep_items: bool = False) -> dict[str, Any]:
    """Sample ``num_samples`` images under ``row``, score them against ``real``; one result dict.

    With ``ref_stats`` (a :class:`~orderlab.metrics.ref_stats.RefStats` of the extractor's width) the result also
    holds ``fid_ref``: the Fréchet distance of the same generated features to those published statistics.

    Every metric carries a 95 % interval (:mod:`orderlab.analysis.uncertainty`): ``fcd_low``/``fcd_high`` (with
    ``fcd_bias`` and ``fcd_corrected``; ``fid_*`` for Inception features), ``kcd_low``/``kcd_high``,
    ``fid_ref_low``/``fid_ref_high``, and ``nll_low``/``nll_high``; ``interval_method`` names the methods.
    ``n_boot``: bootstrap replicates of the FD and KID intervals (0: none; the cost grows as B x N x D^2, about
    0.6 s per row at B=500, N=898, D=64 on 2 CPU cores, and far more for Inception's D=2048).
    ``keep_items``: the result also holds ``items``: ``features`` (num_samples, D) float64 of the generated set
    (row i = sample i, from ``sample_generator(seed, i)``), ``real_features`` (num_samples, D) of the reference
    set, and ``nll_bits`` (n_val,) per held-out image (None without ``val_tokens``), for
    :func:`~orderlab.analysis.uncertainty.compare_rows`. :func:`write_table` never writes them.

    Labels cycle through the classes (balanced); sample i draws from ``sample_generator(seed, i)``. Wall time counts
    generation only (not tokenizer decoding or metrics), per image, with the whole batch in flight.
    ``progress(phase, samples_done)`` is called after each generated batch ("sampling") and before the metrics
    ("scoring") and the NLL ("NLL"), for a progress bar.
    """
    report = progress or (lambda phase, done: None)
    from orderlab.metrics import ImageMetrics, extract_features

    model, cfg = loaded.model, loaded.config
    schedule = get_schedule(row.schedule, **row.knobs)
    n_cls = max(cfg.num_classes, 1)
    tokens, passes, seconds, extra = [], [], 0.0, {}
    device = next(model.parameters()).device
    warm = torch.zeros(min(2, num_samples), dtype=torch.long, device=device) + (0 if cfg.num_classes else cfg.null_label)
    generate(model, schedule, row.steps, warm, seed=seed, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
             precision=precision, decoder=row.decoder, decoder_args=row.decoder_args)
    for s in range(0, num_samples, batch_size):  # warmed up above: one-time costs stay out of ms_per_image
        b = min(batch_size, num_samples - s)
        labels = (torch.arange(s, s + b, device=device) % n_cls) if cfg.num_classes else \
            torch.full((b,), cfg.null_label, device=device)
        kwargs = dict(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, temperature=temperature, top_k=top_k,
                      top_p=top_p, seed=seed, first_index=s, return_info=True, precision=precision,
                      decoder=row.decoder, decoder_args=row.decoder_args)
        t0 = time.perf_counter()
        out, info = generate(model, schedule, row.steps, labels, **kwargs)
        seconds += time.perf_counter() - t0
        passes.append(info.passes_per_image * b)
        tokens.append(out.cpu())
        report("sampling", s + b)
        for key, val in info.table_stats().items():  # e.g. the Jacobi decoders' acceptance
            extra.setdefault(key, []).extend(val)
    tokens = torch.cat(tokens)  # (num_samples, H, W)
    report("scoring", num_samples)
    images = torch.cat([loaded.decode_tokens(tokens[i:i + 500]) for i in range(0, len(tokens), 500)])
    exact = hasattr(extractor, "score_tokens")  # a dataset with a ground truth: scored on the tokens themselves
    if exact:
        metrics, items = extractor.score_tokens(tokens[:num_samples])
    else:
        scorer = ImageMetrics(extractor, real, num_samples, cache=cache_dir or False, seed=seed)
        fake_features = extract_features(extractor, images[:num_samples])  # once: for the metrics and for fid_ref
        metrics = scorer.compute_features(fake_features)
        if ref_stats is not None:
            metrics["fid_ref"] = ref_stats.fid(fake_features)
    # the schedule's repr names every knob, and for a plan bank its file and content hash: what made these plans
    result = {"row": row.label, "schedule": row.schedule, "schedule_repr": repr(schedule),
              "steps": len(info.plans[0].sizes) if info.plans else row.steps, "decoder": row.decoder,
              "forward_passes": _passes(sum(passes) / num_samples), "ms_per_image": 1000 * seconds / num_samples,
              **metrics}
    for key, val in extra.items():
        result[key] = float(np.mean(val)) if isinstance(val, (list, tuple)) else val
    nll = None
    if val_tokens is not None:  # the model's likelihood under the row's plan, whichever decoder samples it
        report("NLL", num_samples)
        nll = nll_bits_per_image(model, val_tokens, val_labels, row, seed=seed)
        result["nll_bits_per_token"] = float(nll.mean())
        result["nll_images"] = len(nll)
    report("intervals", num_samples)
    result["seed"] = seed
    if exact:
        if nll is not None:
            nll_metrics, nll_items = extractor.nll_metrics(nll, val_tokens)
            result.update(nll_metrics)
            items.update(nll_items)
        result["interval_method"] = extractor.label
        if keep_items:
            result["items"] = {**items, "nll_bits": nll}
    else:
        fd_key = extractor.key
        kid_scale = float(getattr(extractor, "kid_scale", 1.0))
        real_features = scorer.real_features.double().numpy()
        fake_np = fake_features.double().numpy()
        result["kid_scale"] = kid_scale
        result.update(row_intervals(real_features, fake_np, fd_key=fd_key,
                                    kd=metrics["kcd" if fd_key == "fcd" else "kid"], kid_scale=kid_scale,
                                    n_boot=n_boot, seed=seed, nll=nll, ref_stats=ref_stats))
        if keep_items:
            result["items"] = {"features": fake_np, "real_features": real_features, "nll_bits": nll}
    if grid_path:
        save_grid(images[:64], grid_path, nrow=min(8, n_cls) if cfg.num_classes else 8)
        result["grid"] = os.path.basename(grid_path)
    return result


def _passes(x: float) -> int | float:
    """Passes per image: an int for plan decoding (T), a mean for the Jacobi decoders."""
    return int(x) if float(x).is_integer() else round(x, 2)


# ---------------------------------------------------------------------------------------------------- output
TABLE_KEYS = ("row", "forward_passes", "fcd", "fid", "fid_ref", "fcd_corrected", "fid_corrected", "fid_ref_corrected",
              "kcd", "kid", "precision", "recall", "energy", "energy_bias", "abs_mag", "nll_bits_per_token", "nll_gap", "kl",
              "ms_per_image", "accepted_per_pass")
ITEMS_KEY = "items"  # per-sample arrays of evaluate_row(keep_items=True): never written into a table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4f}" if abs(v) < 0.1 else f"{v:.2f}")
    return str(v)


def _cell(r: dict[str, Any], key: str, bounds: tuple[str, str]) -> str:
    lo, hi = r.get(bounds[0]), r.get(bounds[1])
    if key in r and isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return fmt_interval(r[key], lo, hi)
    return _fmt(r.get(key, ""))


def fmt_interval(est: float, low: float, high: float) -> str:
    """``"14.25 [12.91, 15.80]"``: the table's decimals, more when the interval is narrower than they show."""
    vals = [float(v) for v in (est, low, high)]
    if not all(math.isfinite(v) for v in vals):
        return f"{_fmt(est)} [{_fmt(low)}, {_fmt(high)}]"
    dec = 4 if abs(vals[0]) < 0.1 else 2
    width = vals[2] - vals[1]
    if width > 0:
        dec = max(dec, min(6, 1 - math.floor(math.log10(width))))
    return "{0:.{3}f} [{1:.{3}f}, {2:.{3}f}]".format(*vals, dec)


def write_table(results: list[dict[str, Any]], out: str, stem: str = "results", meta: dict | None = None,
                keys: list[str] | None = None) -> dict:
    """Write ``stem``.md, .csv and .json into ``out`` (each atomically); returns the paths.

    The Markdown table shows ``keys`` (default: the evaluation columns present); a column with an interval
    (``INTERVAL_KEYS``, else ``KEY_low``/``KEY_high`` in the row; a plug-in FD's interval is shown in its
    ``_corrected`` column) shows ``value [low, high]`` and says so in its header. CSV and JSON keep every key (low
    and high in columns of their own), except ``items``.
    """
    results = [{k: v for k, v in r.items() if k != ITEMS_KEY} for r in results]
    keys = [k for k in (keys or TABLE_KEYS) if any(k in r for r in results)]
    bounds = {k: INTERVAL_KEYS.get(k, ("", "") if k in PLUGIN_KEYS else (f"{k}_low", f"{k}_high")) for k in keys}
    shown = {k for k in keys if any(bounds[k][0] in r and bounds[k][1] in r for r in results)}
    md = io.StringIO()
    if meta:
        md.write("".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n")
    md.write("| " + " | ".join(f"{k} [95% interval]" if k in shown else k for k in keys) + " |\n|"
             + "---|" * len(keys) + "\n")
    for r in results:
        md.write("| " + " | ".join(_cell(r, k, bounds[k]) for k in keys) + " |\n")
    buf = io.StringIO()
    all_keys = sorted({k for r in results for k in r})
    writer = csv.DictWriter(buf, fieldnames=all_keys)
    writer.writeheader()
    writer.writerows(results)
    paths = {ext: os.path.join(out, f"{stem}.{ext}") for ext in ("md", "csv", "json")}
    atomic_write_bytes(paths["md"], md.getvalue().encode())
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    atomic_write_bytes(paths["json"], json.dumps({"meta": meta or {}, "rows": results}, indent=2).encode())
    return paths


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> one (rows*(H+pad)+pad, nrow*(W+pad)+pad, 3) uint8 picture."""
    b, c, h, w = images.shape
    rows = math.ceil(b / nrow)
    canvas = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), dtype=np.float32) * 0.5
    imgs = images.detach().float().clamp(0, 1).cpu().numpy()
    imgs = np.repeat(imgs, 3, axis=1) if c == 1 else imgs[:, :3]
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y:y + h, x:x + w] = imgs[i].transpose(1, 2, 0)
    return (canvas * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str, nrow: int = 8, scale: int = 4) -> str:
    """Write a sample grid PNG atomically (nearest-neighbour upscaled so small images stay visible)."""
    import matplotlib.image

    pic = image_grid(images, nrow)
    pic = pic.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, pic, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def row_dict(row: Row) -> dict[str, Any]:
    return asdict(row)


def load_eval_data(root: str, split: str = "val", limit: int | None = None):
    """(tokens (N, H, W) long, labels (N,) long) of a prepared split."""
    from orderlab.data.shards import read_split

    tokens, labels = read_split(root, split, limit=limit)
    return torch.from_numpy(tokens).long(), torch.from_numpy(labels).long()


@dataclass
class EvalContext:
    """What every evaluated row needs, loaded once: the model, the real images, the feature extractor, NLL data."""

    loaded: Any
    real: Any
    extractor: Any
    root: str
    val_tokens: torch.Tensor
    val_labels: torch.Tensor


def load_context(ckpt: str, data: str | None = None, split: str = "val", extractor: str = "classifier",
                 nll_samples: int | None = None) -> EvalContext:
    """Load a checkpoint and its evaluation data (shared by ``evaluate``, the demo and ``search``)."""
    from orderlab.metrics import RealImages, TorchScriptFeatures, classifier_features
    from orderlab.model.config import check_data_matches
    from orderlab.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    root = data or loaded.data.get("root")
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"data={root!r}: the real images' dataset folder is needed (pass --data DIR)")
    real = RealImages(root, split)
    try:  # a checkpoint of another grid or vocabulary: say so, not a shape error deep in the feature network
        check_data_matches(loaded.config, real.manifest())
    except ValueError as err:
        raise ValueError(f"checkpoint {ckpt} does not fit the data {root}: {err}") from None
    from orderlab.metrics.token_scorers import scorer_for

    exact = scorer_for(real.manifest()) if extractor == "classifier" else None
    if exact is not None:  # a dataset with a ground truth (ising): exact scores on the tokens, no feature network
        feats = exact
    elif extractor == "classifier":
        # the classifier of the images compared against (a converted published model names no project dataset)
        feats = classifier_features(real.manifest().get("dataset") or loaded.data.get("name") or "digits")
    elif os.path.isfile(extractor):
        feats = TorchScriptFeatures(extractor)
    else:
        raise ValueError(f"extractor={extractor!r} is neither 'classifier' nor a local TorchScript Inception file")
    val_tokens, val_labels = load_eval_data(root, split, nll_samples)
    return EvalContext(loaded, real, feats, root, val_tokens, val_labels)
