"""Shared experiment protocols: one definition used by the quality study and the benchmarks.

``FASHION_MNIST_TINY6``: Fashion-MNIST, the first 20,000 training images resized to 32 px, patch 4
(L = 64); encoder 192 wide / 6 blocks / 3 heads, decoders 128 wide / 2 blocks / 4 heads; norm-pix
on; batch 256; 1 warm-up epoch then cosine; 4 epochs; the official HPM defaults otherwise (blr
1.5e-4, EMA 0.999 -> 0.9999). The time-to-accuracy benchmark and the fair HPM study both start
from it (``dataclasses.replace`` for what each changes).

``ELPV_TINY6``: the same encoder and decoders on ELPV's grey cells at 64 px, patch 8 (L = 64, as
above), all 2,099 training cells, batch 64, 10 epochs, 2 warm-up epochs.
"""

from __future__ import annotations

import dataclasses

from .train import PretrainConfig

FASHION_MNIST_TINY6 = PretrainConfig(
    data="fashion-mnist",
    img_size=32,
    in_chans=1,
    patch_size=4,
    limit=20_000,
    preset="tiny",
    embed_dim=192,
    depth=6,
    num_heads=3,
    decoder_embed_dim=128,
    decoder_depth=2,
    decoder_num_heads=4,
    norm_pix=True,
    batch_size=256,
    blr=1.5e-4,
    warmup_epochs=1,
    epochs=4,
    num_workers=0,
    log_every=10,
    progress=False,
    device="cpu",
)

ELPV_TINY6 = dataclasses.replace(
    FASHION_MNIST_TINY6, data="elpv", img_size=64, patch_size=8, limit=None, batch_size=64, epochs=10, warmup_epochs=2
)
