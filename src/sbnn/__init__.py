"""sbnn: sparse binary neural networks in the {alpha, beta} binary domain.

Implements Schiavone, Galati, Zuluaga, "Binary domain generalization for sparsifying binary
neural networks", ECML-PKDD 2023 (arXiv:2306.13515).
"""

from sbnn import engine, estimators, export, fileformat
from sbnn.binarize import BinarizeConfig, binarize_, init_closed_form_
from sbnn.constraint import SparsityConstraint, sb_layers
from sbnn.evaluate import load_model
from sbnn.fileformat import SBNNFormatError
from sbnn.layers import DOMAINS, LearnableBias, RPReLU, RSign, SBConv2d, SBLayer, SBLinear
from sbnn.primitives import closed_form, dequantize, entropy, pack_bits, sign, unpack_bits
from sbnn.stats import layer_stats, model_bits

__version__ = "0.1.0"

__all__ = [
    "BinarizeConfig",
    "DOMAINS",
    "LearnableBias",
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
    "pack_bits",
    "sb_layers",
    "sign",
    "unpack_bits",
]
