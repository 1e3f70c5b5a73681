"""HRank (Lin et al., CVPR 2020): a channel's score is the mean matrix rank of its H×W feature maps.

Both modes call `torch.linalg.matrix_rank` with its default tolerance (singular values above
max(H, W)·eps·σ_max count) in the same dtype — float32, or float64 for float64 maps — so they return
identical scores on the CPU:
- "faithful": HRank's rank_generation.py — one `matrix_rank(fmap[i, j]).item()` per image and channel,
  on the CPU.
- "fast": one batched `matrix_rank` over the (N·C, H, W) stack, in chunks, on the maps' device. The
  CPU runs the same LAPACK routine per matrix either way; a CUDA solver may round differently and flip
  a singular value that sits exactly on the tolerance.
The original keeps a float32 running mean across batches; we sum integer ranks and divide once, which
is the exact mean.
"""

import torch

from apib.criteria._common import MeanAccumulator, chunk_size, linalg_dtype


class HRankAccumulator(MeanAccumulator):
    """Mean rank per channel over batches of maps: `HRankAccumulator().update(b1).update(b2).scores()`.

    The protocol's 640 images in 5 batches of 128 need only one batch in memory at a time.
    batch_size: matrices per batched `matrix_rank` call in fast mode (None: about 2²⁴ elements per call).
    """

    def _batch_sum(self, fmaps: torch.Tensor) -> torch.Tensor:
        n, c, h, w = fmaps.shape
        if self.mode == "faithful":
            x = fmaps.to("cpu", linalg_dtype(fmaps))
            ranks = torch.tensor(
                [torch.linalg.matrix_rank(x[i, j]).item() for i in range(n) for j in range(c)],
                dtype=torch.int64,
            )
        else:
            flat = fmaps.to(linalg_dtype(fmaps)).reshape(n * c, h, w)
            step = chunk_size(self.batch_size, h * w)
            ranks = torch.cat([torch.linalg.matrix_rank(chunk) for chunk in flat.split(step)])
        return ranks.view(n, c).sum(0).to(fmaps.device)


def hrank_scores(fmaps: torch.Tensor, *, mode: str = "fast", batch_size: int | None = None) -> torch.Tensor:
    """HRank scores of one batch of maps.

    fmaps: (N, C, H, W) floating point, the layer's post-activation maps. Returns (C,) float64 on
    fmaps' device: each channel's rank averaged over the N images (higher = keep). For several batches
    use `HRankAccumulator`.
    """
    return HRankAccumulator(mode=mode, batch_size=batch_size).update(fmaps).scores()
