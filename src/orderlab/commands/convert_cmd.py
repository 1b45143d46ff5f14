"""``orderlab convert``: a released ARPG / LPD / RandAR checkpoint -> an orderlab checkpoint."""

from __future__ import annotations


def convert(*, source: str, ckpt: str, out: str, preset: str | None = None, heads: int | None = None,
            grid: int | None = None, weights: str = "auto", tokenizer: str | None = None,
            dtype: str = "float32") -> None:
    """Convert a published model's released checkpoint (ARPG, LPD, RandAR) into an orderlab checkpoint.

    The architecture is read from the tensor shapes (or checked against ``--preset``); the official keys are mapped
    onto the matching orderlab backbone; unknown keys, missing keys and shape mismatches stop it with the list,
    and nothing is written. ``evaluate``, ``sample``, ``bench`` and ``search`` then load ``out`` like any other
    checkpoint; the row ``native`` runs the model's own decoding.

    Args:
        source: whose checkpoint (``--from``): arpg, lpd or randar (or a plugin's converter).
        ckpt: the released file: a torch pickle (.pt/.pth) or a .safetensors file.
        out: the orderlab checkpoint to write.
        preset: a published preset (arpg-L, lpd-XL, randar-L, ...): the file must hold exactly that model.
        heads: attention heads (default: width / 64, as every published size, or the preset's).
        grid: token grid side (default: 16, or the preset's; LPD's position table gives its own).
        weights: auto (EMA weights when the file has them), ema, or model.
        tokenizer: LlamaGen's VQ-16 weights (vq_ds16_c2i.pt), recorded so that samples decode to pixels.
        dtype: float32, bfloat16 or float16 for the written weights.
    """
    from orderlab.published.convert import convert_checkpoint

    res = convert_checkpoint(source, ckpt, out, preset=preset, heads=heads, grid=grid, weights=weights,
                             tokenizer=tokenizer, dtype=dtype)
    cfg = res["config"]
    for line in res["notes"] + res["facts"]:
        print(f"  {line}")
    row = res["native"]["row"]
    print(f"wrote {out}: {source} -> orderlab '{cfg.arch}' backbone, {res['params']:,} parameters, "
          f"{cfg.height}x{cfg.width} grid; its own decoding is the row 'native' ({row['schedule']}:{row['steps']} "
          f"{row['knobs']}, CFG {res['native']['cfg_schedule']} {res['native']['cfg_scale']})")
