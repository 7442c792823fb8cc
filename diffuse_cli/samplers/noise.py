"""Sources of Gaussian noise for samplers.

A sampler draws all its randomness (x_T and the noise of every step) from a NoiseSource, an
object with `batch_size`, `randn(shape_per_sample, dtype)` -> [B, *shape] and `randn_like(x)`.

PerSampleNoise gives each sample its own seeded generator, so sample k with seed s is the same
whatever batch it is drawn in and however many devices share the work (as NVlabs/edm seeds each
image by its index). A plain torch.Generator or None (the global RNG) is adapted by
`as_noise_source`; their draws do depend on the batch.
"""

from collections.abc import Sequence
from numbers import Integral

import numpy as np
import torch

SEED_BITS = 128


def seeded_generator(seed: int) -> np.random.Generator:
    """A PCG64 stream keyed by all bits of `seed` (any int; reduced mod 2^128). torch's CPU
    generator keeps only the low 32 bits of a seed (its Mersenne Twister is seeded with 32
    bits), so seeds such as (run seed << 32) + index would collide across run seeds."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed % (1 << SEED_BITS))))


class PerSampleNoise:
    """One random stream per sample (seeded_generator); row i of every draw comes only from
    seed i's stream.

    Noise is drawn in float32 on the CPU (so a seed gives the same numbers on any machine and for
    any dtype) and then moved and cast.

    Args:
        seeds: one int seed per sample in the batch.
        device: where the drawn tensors go.
    """

    def __init__(self, seeds: Sequence[int], device="cpu"):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("PerSampleNoise needs at least one seed.")
        self.seeds = seeds
        self.device = torch.device(device)
        self.generators = [seeded_generator(s) for s in seeds]

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    def randn(self, shape_per_sample, dtype=torch.float32) -> torch.Tensor:
        """Standard normal noise [B, *shape_per_sample]; row i drawn from generator i."""
        shape = tuple(shape_per_sample)
        rows = np.stack([g.standard_normal(shape, dtype=np.float32) for g in self.generators])
        return torch.from_numpy(rows).to(device=self.device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise with x's shape [B, ...], dtype and device."""
        _check_batch(self, x)
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


class GeneratorNoise:
    """Adapts one torch.Generator (or None: the global RNG) to the NoiseSource interface.

    Draws for a batch come from one stream, so they depend on the batch size.
    """

    def __init__(self, generator: torch.Generator | None, batch_size: int, device="cpu"):
        self.generator = generator
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def randn(self, shape_per_sample, dtype=torch.float32) -> torch.Tensor:
        """Standard normal noise [B, *shape_per_sample]."""
        shape = (self.batch_size, *tuple(shape_per_sample))
        if self.generator is None:
            return torch.randn(shape, dtype=dtype, device=self.device)
        noise = torch.randn(shape, generator=self.generator, device=self.generator.device)
        return noise.to(device=self.device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise with x's shape [B, ...], dtype and device."""
        _check_batch(self, x)
        if self.generator is None:
            return torch.randn_like(x)
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


def _check_batch(source, x):
    if x.shape[0] != source.batch_size:
        raise ValueError(
            f"The noise source has {source.batch_size} samples but the tensor has batch size "
            f"{x.shape[0]}."
        )


def as_noise_source(source, batch_size: int, device="cpu"):
    """A NoiseSource for `batch_size` samples from what a caller passes as `noise`.

    Args:
        source: a PerSampleNoise (or other object with randn/randn_like), a torch.Generator,
            None (the global RNG), or a sequence of int seeds (one per sample).
        batch_size: the number of samples the source must serve.
        device: where drawn tensors go (for the Generator / None / seeds cases).

    Raises:
        ValueError: a per-sample source whose size differs from batch_size.
        TypeError: anything else.
    """
    if source is None or isinstance(source, torch.Generator):
        return GeneratorNoise(source, batch_size, device)
    if isinstance(source, Sequence) and all(isinstance(s, Integral) for s in source):
        source = PerSampleNoise(source, device)
    if hasattr(source, "randn") and hasattr(source, "randn_like"):
        if getattr(source, "batch_size", batch_size) != batch_size:
            raise ValueError(
                f"The noise source has {source.batch_size} samples but the batch has {batch_size}."
            )
        return source
    raise TypeError(
        "noise must be a PerSampleNoise, a torch.Generator, None or a list of int seeds, "
        f"got {type(source).__name__}."
    )
