"""``orderlab sample``: a grid of samples from a checkpoint under one schedule, with optional in/out-painting.

    orderlab sample --ckpt last.ckpt --schedule locality --steps 8 --cfg 2.0 --num 64 --out grid.png
    orderlab sample --ckpt last.ckpt --known grid.npy --region rows=4:8 --out completed.png    # inpaint each image
    orderlab sample --ckpt last.ckpt --known centre.npy --canvas rows=2:6,cols=2:6 --out out.png # outpaint
    orderlab sample --ckpt last.ckpt --known fives.npy --region rows=4:8 --label 6 --out six.png  # class editing

``--known`` holds B images (tokens (B, h, w) or (h, w) in a .npy, or one image file); output i completes known
image i, so there are B outputs. ``--num`` other than B needs ``--broadcast true`` (each image completed --num/B times).
``--canvas`` names the cells the known tokens cover (all of them by default; tokens of the canvas's size are
placed there): every cell outside it is generated (outpainting). ``--region`` names further cells to GENERATE
inside it (inpainting). Every other cell is known and comes back unchanged. With ``--known`` and no ``--label``
the samples are unconditional (the null class, when the model has one), so the known cells decide the content;
``--label K`` regenerates the unknown cells under class K (class-conditional editing).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

__all__ = ["known_inputs", "load_known", "parse_canvas", "parse_region", "sample"]


def _span(text: str, size: int, key: str) -> slice:
    m = re.fullmatch(r"(\d*):(\d*)", text)
    if not m:
        raise ValueError(f"--region {key}={text}: expected start:stop, e.g. 4:8")
    a, b = int(m[1] or 0), int(m[2] or size)
    if not 0 <= a < b <= size:
        raise ValueError(f"--region {key}={text} is outside 0..{size}")
    return slice(a, b)


def parse_region(spec: str, height: int, width: int) -> torch.Tensor:
    """``rows=a:b`` | ``cols=a:b`` | ``box=r0:r1,c0:c1`` | ``outside=r0:r1,c0:c1`` -> (H, W) bool: True = generate."""
    kind, _, arg = spec.partition("=")
    gen = torch.zeros(height, width, dtype=torch.bool)
    if kind == "rows":
        gen[_span(arg, height, kind)] = True
    elif kind == "cols":
        gen[:, _span(arg, width, kind)] = True
    elif kind in ("box", "outside"):
        parts = arg.split(",")
        if len(parts) != 2:
            raise ValueError(f"--region {spec!r}: expected {kind}=r0:r1,c0:c1")
        gen[_span(parts[0], height, kind), _span(parts[1], width, kind)] = True
        if kind == "outside":
            gen = ~gen
    else:
        raise ValueError(f"--region {spec!r}: kind {kind!r} is not one of ['box', 'cols', 'outside', 'rows']")
    if gen.all():
        raise ValueError(f"--region {spec!r} covers the whole grid: nothing would be known")
    return gen


def parse_canvas(spec: str, height: int, width: int) -> tuple[slice, slice]:
    """``rows=a:b,cols=c:d`` (either part may be left out: all rows / all columns) -> the known canvas's slices."""
    spans = {"rows": slice(0, height), "cols": slice(0, width)}
    seen = set()
    for part in spec.split(","):
        key, _, arg = part.strip().partition("=")
        if key not in spans or key in seen:
            raise ValueError(f"--canvas {spec!r}: expected rows=a:b,cols=c:d (either part may be left out)")
        seen.add(key)
        spans[key] = _span(arg, height if key == "rows" else width, f"canvas {key}")
    return spans["rows"], spans["cols"]


def load_known(path: str, loaded) -> torch.Tensor:
    """(B, h, w) tokens from a .npy of tokens (h, w) or (B, h, w), or one image file (encoded by the checkpoint's
    tokenizer); h, w are the grid's or a smaller canvas's (see :func:`known_inputs`)."""
    from orderlab.train.checkpoint import tokenizer_from_info

    cfg = loaded.config
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--known {path!r} does not exist")
    if path.endswith(".npy"):
        arr = np.load(path)
        if arr.ndim not in (2, 3) or 0 in arr.shape or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"--known {path}: expected integer tokens of shape (H, W) or (B, H, W), got "
                             f"{arr.dtype} {arr.shape}")
        tok = torch.from_numpy(arr.astype(np.int64))
        if tok.min() < 0 or tok.max() >= cfg.vocab_size:
            raise ValueError(f"--known {path}: tokens must lie in 0..{cfg.vocab_size - 1}, got "
                             f"{int(tok.min())}..{int(tok.max())}")
        return tok if tok.ndim == 3 else tok[None]
    import matplotlib.image

    img = torch.from_numpy(np.asarray(matplotlib.image.imread(path), dtype=np.float32))
    img = img[..., :3].mean(-1) if img.ndim == 3 else img  # grey (Hpx, Wpx)
    if img.max() > 1.0:
        img = img / 255.0
    tokenizer = tokenizer_from_info(loaded.data, cfg)
    return tokenizer.encode(img[None, None]).long()  # (1, h, w)


def known_inputs(tok: torch.Tensor, height: int, width: int, *, canvas: str | None = None,
                 region: str | None = None, num: int | None = None, broadcast: bool = False, name: str = "--known"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Known tokens (B, h, w) -> the decoder's ``known``: tokens (num, H, W) and the known mask (H, W), True = kept.

    Output i completes known image ``i // (num / B)``: B outputs by default; ``num`` must equal B unless
    ``broadcast``, when it must be a multiple of B.
    """
    b, h, w = tok.shape
    rows, cols = parse_canvas(canvas, height, width) if canvas else (slice(0, height), slice(0, width))
    ch, cw = rows.stop - rows.start, cols.stop - cols.start
    if (h, w) == (height, width):
        full = tok  # a whole grid: only the canvas cells of it are kept
    elif (h, w) == (ch, cw) and canvas:
        full = torch.zeros(b, height, width, dtype=torch.long)  # (B, H, W); cells outside the canvas are generated
        full[:, rows, cols] = tok
    elif canvas:
        raise ValueError(f"{name} tokens are {h}x{w}, but --canvas {canvas} is {ch}x{cw} and the grid {height}x"
                         f"{width}: give tokens of the canvas's size or of the whole grid")
    else:
        raise ValueError(f"{name} tokens are {h}x{w}, the model's grid is {height}x{width}; place a smaller known "
                         f"image with --canvas rows=a:b,cols=c:d")
    known = torch.zeros(height, width, dtype=torch.bool)  # (H, W)
    known[rows, cols] = True
    if region is not None:
        known &= ~parse_region(region, height, width)
    if not known.any():
        raise ValueError(f"--region {region} covers the whole --canvas {canvas}: nothing would be known")
    if known.all():
        raise ValueError(f"{name}: nothing to generate; give --region (cells to generate) or --canvas (the cells "
                         f"to keep, the rest is generated)")
    if num is None and broadcast:
        raise ValueError(f"--broadcast repeats each of the {b} {name} image(s) to fill --num; give --num")
    num = b if num is None else num
    if broadcast and num % b:
        raise ValueError(f"--num {num} is not a multiple of the {b} image(s) in {name} (--broadcast completes "
                         f"each one --num/{b} times)")
    if num != b and not broadcast:
        raise ValueError(f"--num {num} does not match the {b} image(s) in {name}: output i completes known image "
                         f"i; leave --num out, or pass --broadcast true to complete each image --num/{b} times")
    return full.repeat_interleave(num // b, dim=0), known  # (num, H, W), (H, W)


def sample(*, ckpt: str, out: str = "samples.png", schedule: str = "random", steps: int | None = None,
           num: int | None = None, cfg: float = 1.0, cfg_schedule: str = "constant", temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, label: int | None = None, seed: int = 0, known: str | None = None,
           region: str | None = None, canvas: str | None = None, broadcast: bool = False, decoder: str = "plan",
           decoder_args: dict | None = None, precision: str = "fp32", save_tokens: bool = True) -> None:
    """Sample a grid of images from a checkpoint.

    Args:
        ckpt: checkpoint written by ``orderlab fit``.
        out: PNG path of the grid (tokens go beside it as .npy when ``save_tokens``).
        schedule: registered schedule name, or ``native``: a converted published model's own decoding (its order,
            step sizes and budget; ``orderlab convert``).
        steps: step budget T (None: the schedule's natural budget; for ``native``, the model's own).
        num: number of samples (default 64; with ``known``: one per known image, see ``broadcast``).
        cfg: classifier-free guidance weight (1 = off).
        cfg_schedule: constant | linear | linear_token.
        temperature: sampling temperature (0 = greedy).
        top_k: keep the k most likely tokens (0 = all).
        top_p: nucleus mass (1 = all).
        label: class of every sample (None: classes in turn; with ``known``: unconditional, the null class, when
            the model has one). With ``known``, a label regenerates the unknown cells under that class (editing).
        seed: sample i uses ``sample_generator(seed, i)`` (orderlab.seeding).
        known: B images to complete: tokens (.npy, (B, h, w) or (h, w)) or one image file; output i completes
            image i. (h, w) is the grid, or the size of ``canvas`` (a smaller image placed there).
        region: cells to generate inside the canvas: rows=a:b, cols=a:b, box=r0:r1,c0:c1 or outside=r0:r1,c0:c1.
        canvas: the cells the known image covers, rows=a:b,cols=c:d (default: the whole grid); every cell
            outside it is generated (outpainting).
        broadcast: let ``num`` be a multiple of the B known images: each is completed num/B times (outputs
            i*num/B .. (i+1)*num/B - 1 complete image i).
        decoder: plan (one forward per Plan step) or a Jacobi decoder for raster models (sjd, pjd).
        decoder_args: the Jacobi decoder's knobs, e.g. '{window: 8, init: repeat_left}' (pjd: also row_lag, commit).
        precision: fp32, or bf16/fp16 autocast (the GPU setting).
        save_tokens: also write the sampled tokens as .npy.
    """
    from orderlab.analysis.evaluation import save_grid
    from orderlab.checks import check_positive_int
    from orderlab.data.atomic import atomic_write_bytes
    from orderlab.decoding.decode import generate
    from orderlab.decoding.sampling import check_sampling_args
    from orderlab.train.checkpoint import load_checkpoint

    if num is not None:
        check_positive_int(num, "--num")
    check_sampling_args(cfg_scale=cfg, temperature=temperature, top_k=top_k, top_p=top_p, cfg_schedule=cfg_schedule,
                        names={"cfg_scale": "--cfg", "temperature": "--temperature", "top_k": "--top_k",
                               "top_p": "--top_p", "cfg_schedule": "--cfg_schedule"})
    loaded = load_checkpoint(ckpt)
    c = loaded.config
    if label is not None and not 0 <= label < max(c.num_classes, 1):
        raise ValueError(f"--label {label} is outside 0..{c.num_classes - 1}")
    if known is None and (region is not None or canvas is not None or broadcast):
        raise ValueError("--region, --canvas and --broadcast need --known (the image(s) to complete)")
    kw = {}
    if known is not None:
        tok = load_known(known, loaded)  # (B, h, w)
        full, keep = known_inputs(tok, c.height, c.width, canvas=canvas, region=region, num=num, broadcast=broadcast)
        num = full.shape[0]
        kw["known"] = (full, keep)  # (num, H, W), (H, W)
        print(f"known: {tok.shape[0]} image(s) from {known}, each completed {num // tok.shape[0]} time(s); "
              f"{int(keep.sum())} of {keep.numel()} cells kept, {int((~keep).sum())} generated")
    num = 64 if num is None else num
    if label is not None:
        labels = torch.full((num,), label)
    elif c.num_classes == 0 or (known is not None and c.null_label is not None):
        labels = torch.full((num,), c.null_label)  # unconditional: the known cells decide
    else:
        labels = torch.arange(num) % max(c.num_classes, 1)
    if schedule == "native":
        from orderlab.published.native import native_row
        from orderlab.schedule import get_schedule

        row = native_row(loaded)
        schedule = get_schedule(row["schedule"], **row.get("knobs", {}))
        steps = row["steps"] if steps is None else steps
    if decoder != "plan":
        kw.update(decoder=decoder, decoder_args=decoder_args)
    elif decoder_args:
        raise ValueError(f"--decoder_args {decoder_args} needs --decoder sjd or pjd")
    tokens, info = generate(loaded.model, schedule, steps, labels, cfg_scale=cfg, cfg_schedule=cfg_schedule,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, return_info=True,
                            precision=precision, **kw)
    save_grid(loaded.decode_tokens(tokens), out, nrow=min(8, num))
    tokens_path = os.path.splitext(out)[0] + ".npy"
    if save_tokens:
        import io

        buf = io.BytesIO()
        np.save(buf, tokens.numpy().astype(np.int32))
        atomic_write_bytes(tokens_path, buf.getvalue())
    print(f"wrote {out}: {num} samples, schedule {schedule}, decoder {decoder}, "
          f"{info.passes_per_image:g} forward passes per image")
    if save_tokens:
        print(f"wrote {tokens_path}: the sampled tokens, int32 ({num}, {tokens.shape[1]}, {tokens.shape[2]}); "
              "--save_tokens false skips it, --known takes it back")
