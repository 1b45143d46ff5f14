"""``orderlab sample``: a grid of samples from a checkpoint under one schedule, with optional in/out-painting.

    orderlab sample --ckpt last.ckpt --schedule locality --steps 8 --cfg 2.0 --num 64 --out grid.png
    orderlab sample --ckpt last.ckpt --known digit.npy --region rows=4:8 --out completed.png   # inpaint bottom half
    orderlab sample --ckpt last.ckpt --known digit.png --region outside=2:6,2:6 --out out.png  # outpaint

``--region`` names the cells to GENERATE; every other cell is known and comes back unchanged.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

__all__ = ["sample", "parse_region", "load_known"]


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


def load_known(path: str, loaded) -> torch.Tensor:
    """(1, H, W) tokens from a .npy of tokens (H, W) or an image file (encoded by the checkpoint's tokenizer)."""
    from orderlab.checkpoint import tokenizer_from_info

    cfg = loaded.config
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--known {path!r} does not exist")
    if path.endswith(".npy"):
        tok = torch.from_numpy(np.load(path)).long()
        if tok.ndim == 3:
            tok = tok[0]
        if tuple(tok.shape) != (cfg.height, cfg.width):
            raise ValueError(f"--known {path}: tokens of shape {tuple(tok.shape)}, the model's grid is "
                             f"({cfg.height}, {cfg.width})")
        if tok.min() < 0 or tok.max() >= cfg.vocab_size:
            raise ValueError(f"--known {path}: tokens must lie in 0..{cfg.vocab_size - 1}")
        return tok[None]
    import matplotlib.image

    img = torch.from_numpy(np.asarray(matplotlib.image.imread(path), dtype=np.float32))
    img = img[..., :3].mean(-1) if img.ndim == 3 else img  # grey (Hpx, Wpx)
    if img.max() > 1.0:
        img = img / 255.0
    tokenizer = tokenizer_from_info(loaded.data, cfg)
    return tokenizer.encode(img[None, None]).long()  # (1, H, W)


def sample(*, ckpt: str, out: str = "samples.png", schedule: str = "random", steps: int | None = None,
           num: int = 64, cfg: float = 1.0, cfg_schedule: str = "constant", temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, label: int | None = None, seed: int = 0, known: str | None = None,
           region: str | None = None, decoder: str = "plan", decoder_args: dict | None = None,
           precision: str = "fp32", save_tokens: bool = True) -> None:
    """Sample a grid of images from a checkpoint.

    Args:
        ckpt: checkpoint written by ``orderlab fit``.
        out: PNG path of the grid (tokens go beside it as .npy when ``save_tokens``).
        schedule: registered schedule name.
        steps: step budget T (None: the schedule's natural budget).
        num: number of samples.
        cfg: classifier-free guidance weight (1 = off).
        cfg_schedule: constant | linear | linear_token.
        temperature: sampling temperature (0 = greedy).
        top_k: keep the k most likely tokens (0 = all).
        top_p: nucleus mass (1 = all).
        label: class of every sample (None: classes in turn).
        seed: sample i uses seed + i.
        known: tokens (.npy) or an image whose cells outside ``region`` are kept (in/out-painting, editing).
        region: cells to generate: rows=a:b, cols=a:b, box=r0:r1,c0:c1 or outside=r0:r1,c0:c1.
        decoder: plan (one forward per Plan step) or a Jacobi decoder for raster models (sjd, pjd).
        decoder_args: the Jacobi decoder's knobs, e.g. '{window: 8, init: repeat_left}' (pjd: also row_lag, commit).
        precision: fp32, or bf16/fp16 autocast (the GPU setting).
        save_tokens: also write the sampled tokens as .npy.
    """
    from orderlab.checkpoint import load_checkpoint
    from orderlab.data.atomic import atomic_write_bytes
    from orderlab.decode import generate
    from orderlab.evaluation import save_grid

    loaded = load_checkpoint(ckpt)
    c = loaded.config
    if label is not None and not 0 <= label < max(c.num_classes, 1):
        raise ValueError(f"--label {label} is outside 0..{c.num_classes - 1}")
    if (known is None) != (region is None):
        raise ValueError("--known and --region go together (the image to keep, and the cells to generate)")
    labels = torch.full((num,), label) if label is not None else torch.arange(num) % max(c.num_classes, 1)
    if c.num_classes == 0:
        labels = torch.full((num,), c.null_label)
    kw = {}
    if known is not None:
        tok = load_known(known, loaded).expand(num, -1, -1)
        kw["known"] = (tok, ~parse_region(region, c.height, c.width))
    if decoder != "plan":
        kw.update(decoder=decoder, decoder_args=decoder_args)
    elif decoder_args:
        raise ValueError(f"--decoder_args {decoder_args} needs --decoder sjd or pjd")
    tokens, info = generate(loaded.model, schedule, steps, labels, cfg_scale=cfg, cfg_schedule=cfg_schedule,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, return_info=True,
                            precision=precision, **kw)
    save_grid(loaded.decode_tokens(tokens), out, nrow=min(8, num))
    if save_tokens:
        import io

        buf = io.BytesIO()
        np.save(buf, tokens.numpy().astype(np.int32))
        atomic_write_bytes(os.path.splitext(out)[0] + ".npy", buf.getvalue())
    print(f"wrote {out}: {num} samples, schedule {schedule}, decoder {decoder}, "
          f"{info.passes_per_image:g} forward passes per image")
