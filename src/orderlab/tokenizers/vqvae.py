"""A small VQ-VAE for 28x28 gray images: 7x7 tokens, K=64 codes of D=16, EMA codebook, dead-code restart.

Recipe (van den Oord et al. 2017, "Neural Discrete Representation Learning", with the EMA codebook of its
appendix): conv encoder 28 -> 14 -> 7, nearest-code quantization with a straight-through gradient, mirrored
decoder; loss = reconstruction (BCE on logits, or MSE) + 0.25 * commitment. Codes whose EMA usage falls below a
threshold are restarted on random encoder outputs of the current batch (drawn from a seeded generator).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orderlab.tokenizers.base import Tokenizer, TokenizerError, register_tokenizer, seeded_init_

__all__ = ["VQVAETokenizer", "EMACodebook", "train_vqvae"]


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EMACodebook(nn.Module):
    """K codes of dimension D, updated by exponential moving averages of their assigned encoder outputs.

    Args:
        codebook_size: K.
        dim: D.
        decay: EMA decay of counts and sums.
        eps: Laplace smoothing of the counts (avoids division by zero for unused codes).
    """

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("embedding", torch.zeros(codebook_size, dim))  # (K, D)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,)
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))  # (K, D)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(M, D) vectors -> (M,) index of the nearest code (squared Euclidean)."""
        d = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embedding.t()
             + self.embedding.pow(2).sum(1)[None])  # (M, K)
        return d.argmin(dim=1)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """Data-dependent init: K distinct random rows of ``z`` (M, D), M >= K (repeats allowed if M < K)."""
        k = self.embedding.shape[0]
        idx = torch.randperm(z.shape[0], generator=generator)[:k]
        if idx.numel() < k:
            idx = torch.randint(0, z.shape[0], (k,), generator=generator)
        self.embedding.copy_(z[idx.to(z.device)])
        self.embed_sum.copy_(self.embedding)
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """One EMA step from (M, D) vectors and their (M,) assignments."""
        onehot = F.one_hot(idx, self.embedding.shape[0]).type_as(z)  # (M, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.embedding.shape[0] * self.eps) * n  # (K,)
        self.embedding.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, generator: torch.Generator, threshold: float = 1.0) -> int:
        """Move codes with EMA count < ``threshold`` onto random rows of ``z``; returns how many moved.

        The EMA count is assignments per batch, so the default 1.0 (as in Jukebox) restarts a code as soon as it
        averages under one use per batch; a tiny threshold (0.01) would wait ~460 steps of decay 0.99 and leave a
        short run collapsed onto a handful of codes.
        """
        dead = torch.nonzero(self.cluster_size < threshold).flatten()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=generator).to(z.device)
        self.embedding[dead] = z[pick]
        self.embed_sum[dead] = z[pick]
        self.cluster_size[dead] = 1.0
        return int(dead.numel())


@register_tokenizer("vqvae")
class VQVAETokenizer(Tokenizer):
    """Conv VQ-VAE, 4x downsampling (28x28 -> 7x7 tokens).

    Args:
        channels: C image channels.
        image_size: H = W of the images (a multiple of 4).
        codebook_size: K = V.
        code_dim: D.
        hidden: widths of the two stride-2 stages.
        decay: EMA decay of the codebook.
        commitment: weight of the commitment loss.
        recon: "bce" (logits against [0, 1] targets) or "mse".
    """

    def __init__(self, channels: int = 1, image_size: int = 28, codebook_size: int = 64, code_dim: int = 16,
                 hidden: tuple[int, int] = (32, 64), decay: float = 0.99, commitment: float = 0.25,
                 recon: str = "bce") -> None:
        super().__init__()
        if image_size % 4:
            raise TokenizerError(f"vqvae: image_size must be a multiple of 4, got {image_size}")
        if recon not in ("bce", "mse"):
            raise TokenizerError(f"vqvae: recon must be 'bce' or 'mse', got {recon!r}")
        h0, h1 = hidden
        self._cfg = {"channels": channels, "image_size": image_size, "codebook_size": codebook_size,
                     "code_dim": code_dim, "hidden": [h0, h1], "decay": decay, "commitment": commitment,
                     "recon": recon}
        self.commitment, self.recon = commitment, recon
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, h0, 4, 2, 1), nn.ReLU(), nn.Conv2d(h0, h1, 4, 2, 1),
            _Residual(h1), nn.ReLU(), nn.Conv2d(h1, code_dim, 1))
        self.codebook = EMACodebook(codebook_size, code_dim, decay)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, h1, 3, padding=1), _Residual(h1), nn.ReLU(),
            nn.ConvTranspose2d(h1, h0, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(h0, channels, 4, 2, 1))

    @property
    def grid(self) -> tuple[int, int]:
        s = self._cfg["image_size"] // 4
        return (s, s)

    @property
    def vocab_size(self) -> int:
        return self._cfg["codebook_size"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self._cfg["image_size"]
        return (self._cfg["channels"], s, s)

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*h*w, D)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images)  # (B, D, h, w)
        return self.codebook.nearest(self._flat(z)).view(z.shape[0], z.shape[2], z.shape[3])  # (B, h, w)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        zq = self.codebook.embedding[tokens].permute(0, 3, 1, 2)  # (B, D, h, w)
        out = self.decoder(zq)  # (B, C, H, W)
        return torch.sigmoid(out) if self.recon == "bce" else out

    def loss(self, images: torch.Tensor, update: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss on a batch (B, C, H, W); ``update`` applies one EMA codebook step."""
        z = self.encoder(images)  # (B, D, h, w)
        flat = self._flat(z)  # (M, D)
        idx = self.codebook.nearest(flat.detach())  # (M,)
        if update:
            self.codebook.ema_update(flat.detach(), idx)
        zq = self.codebook.embedding[idx]  # (M, D)
        commit = F.mse_loss(flat, zq.detach())
        zq = flat + (zq - flat).detach()  # straight-through gradient to the encoder
        out = self.decoder(zq.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2))  # (B, C, H, W)
        if self.recon == "bce":
            rec = F.binary_cross_entropy_with_logits(out, images)
            mse = F.mse_loss(torch.sigmoid(out), images)
        else:
            rec = mse = F.mse_loss(out, images)
        return rec + self.commitment * commit, {"rec": rec.detach(), "mse": mse.detach(), "commit": commit.detach(),
                                                "flat": flat.detach(), "idx": idx}


def train_vqvae(images: torch.Tensor, epochs: int = 2, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                progress: bool = True, **config: Any) -> tuple[VQVAETokenizer, dict[str, float]]:
    """Train a :class:`VQVAETokenizer` on ``images`` (N, C, H, W) float in [0, 1]; deterministic for a seed.

    Args:
        images: training images.
        epochs: passes over ``images``.
        batch_size: images per step.
        lr: Adam learning rate.
        seed: seeds weight init, codebook init, batch order and dead-code restarts.
        progress: show a rich progress bar.
        **config: constructor arguments of :class:`VQVAETokenizer` (image shape is taken from ``images``).

    Returns:
        The trained tokenizer (eval mode) and stats: final ``mse``, ``codes_used`` and ``perplexity`` on the data.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise TokenizerError(f"train_vqvae expects float images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    if h != w:
        raise TokenizerError(f"train_vqvae expects square images, got {h}x{w}")
    gen = torch.Generator().manual_seed(seed)
    model = seeded_init_(VQVAETokenizer(channels=c, image_size=h, **config), gen).to(images.device)
    with torch.no_grad():
        first = images[torch.randperm(n, generator=gen)[: max(batch_size, 1024)].to(images.device)]
        model.codebook.init_from(model._flat(model.encoder(first)), gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = max(1, n // batch_size)
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("training VQ-VAE", total=epochs * steps_per_epoch)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(images.device)
            for s in range(steps_per_epoch):
                batch = images[perm[s * batch_size:(s + 1) * batch_size]]  # (B, C, H, W)
                loss, parts = model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.codebook.restart_dead(parts["flat"], gen)
                bar.update(task, advance=1, description=f"training VQ-VAE  mse {float(parts['mse']):.4f}")
    model.eval()
    return model, vq_stats(model, images)


@torch.no_grad()
def vq_stats(model: VQVAETokenizer, images: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Reconstruction MSE (mean over pixels), codes used and codebook perplexity of ``model`` on ``images``."""
    sq, count = 0.0, 0
    hist = torch.zeros(model.vocab_size, dtype=torch.float64)
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        tok = model.encode(x)  # (B, h, w)
        sq += float(F.mse_loss(model.decode(tok), x, reduction="sum"))
        count += x.numel()
        hist += torch.bincount(tok.flatten().cpu(), minlength=model.vocab_size).double()
    p = hist / hist.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return {"mse": sq / max(count, 1), "codes_used": int((hist > 0).sum()), "perplexity": perplexity}
