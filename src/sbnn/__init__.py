"""sbnn: sparse binary neural networks in the {alpha, beta} binary domain.

Implements Schiavone, Galati, Zuluaga, "Binary domain generalization for sparsifying binary
neural networks", ECML-PKDD 2023 (arXiv:2306.13515).
"""

import os

# Busy-waiting OpenMP threads make torch 5-10x slower on a shared 2-core machine; this only
# takes effect when sbnn is imported before torch (the `sbnn` command always is).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sbnn import engine, estimators, export, fileformat, models
from sbnn.binarize import BinarizeConfig, binarize_, init_closed_form_
from sbnn.constraint import SparsityConstraint, sb_layers
from sbnn.convert import ConversionError
from sbnn.evaluate import load_model
from sbnn.fileformat import SBNNFormatError
from sbnn.layers import DOMAINS, LearnableBias, RPReLU, RSign, SBConv2d, SBLayer, SBLinear
from sbnn.primitives import closed_form, dequantize, entropy, pack_bits, sign, unpack_bits
from sbnn.prune import PruneConfig
from sbnn.stats import layer_stats, model_bits

__version__ = "0.1.0"

__all__ = [
    "BinarizeConfig",
    "ConversionError",
    "DOMAINS",
    "LearnableBias",
    "PruneConfig",
    "RPReLU",
    "RSign",
    "SBConv2d",
    "SBLayer",
    "SBLinear",
    "SBNNFormatError",
    "SparsityConstraint",
    "binarize_",
    "closed_form",
    "dequantize",
    "engine",
    "entropy",
    "estimators",
    "export",
    "fileformat",
    "init_closed_form_",
    "layer_stats",
    "load_model",
    "model_bits",
    "models",
    "pack_bits",
    "sb_layers",
    "sign",
    "unpack_bits",
]
