"""The options of pruning (:class:`PruneConfig`), apart from :mod:`sbnn.verbs.prune` so that
the config and the command line read them without loading torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["PruneConfig"]


@dataclass
class PruneConfig:
    """Pruning options of ``convert`` and ``train`` (all off by default).

    Attributes:
        magnitude: share in [0, 1) of each sparse-binary layer's weights pruned by magnitude.
        filters: share in [0, 1) of each sparse-binary layer's output filters made dead.
        kernels: target share in [0, 1) of all-zero k x k kernels in each sparse-binary conv.
        patterns: ``None`` or k (1..8; the paper's baseline uses 4, 5, 6): each k x k kernel is
            restricted to ``2**k`` learned bit patterns per layer.
        patterns_trained: with ``patterns``, re-learn each layer's codebook during training
            (Sub-bit's trained form): at every training forward each kernel takes its nearest
            codeword and each codeword one weighted k-means step towards its members' latent
            weights (:func:`sbnn.verbs.prune.refine_patterns`); off: the codebook learned at
            the start stays fixed.
        shrink: physically remove dead filters where that is exact, at the end of conversion /
            fine-tuning (:func:`shrink_`).
    """

    magnitude: float = 0.0
    filters: float = 0.0
    kernels: float = 0.0
    patterns: int | None = None
    shrink: bool = True
    patterns_trained: bool = False

    def __post_init__(self):
        for name in ("magnitude", "filters", "kernels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"prune.{name} must be a share in [0, 1), got {v!r}")
            setattr(self, name, float(v))
        if self.patterns is not None:
            if isinstance(self.patterns, bool) or not isinstance(self.patterns, int):
                raise ValueError(f"prune.patterns must be None or an int k, got {self.patterns!r}")
            if not 1 <= self.patterns <= 8:
                raise ValueError(
                    f"prune.patterns must be k in 1..8 (2**k patterns; Sub-bit uses 4, 5, 6), "
                    f"got {self.patterns}"
                )
        if not isinstance(self.patterns_trained, bool):
            raise ValueError(f"prune.patterns_trained must be true or false, got "
                             f"{self.patterns_trained!r}")
        if self.patterns_trained and self.patterns is None:
            raise ValueError("prune.patterns_trained needs prune.patterns (the codebook size k)")

    @property
    def active(self) -> bool:
        return bool(self.magnitude or self.filters or self.kernels or self.patterns)

    def to_dict(self) -> dict:
        return asdict(self)
