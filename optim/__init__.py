"""Matrix optimizers (Muon, NorMuon, U-NorMuon, Aurora, Dion) and AdamW as one optimizer family.

build_optimizer(cfg.optim, model)   one optimizer object for a model (optim/build.py)
polar, aurora_polar, ...            the maths, as pure functions on [..., m, n] tensors
"""

from .algorithms import AdamW, Aurora, Muon, NorMuon, UNorMuon
from .aurora import aurora_polar, aurora_polar_with_state, riemannian_aurora_polar
from .build import OPTIMIZERS, build_optimizer
from .dion import Dion, dion_update
from .groups import GROUP_RULES, assign_groups
from .matrix import MatrixOptimizer, lr_scale_factor
from .polar import POLAR_METHODS, polar, svd_polar

__all__ = [
    "AdamW",
    "Aurora",
    "Dion",
    "GROUP_RULES",
    "MatrixOptimizer",
    "Muon",
    "NorMuon",
    "OPTIMIZERS",
    "POLAR_METHODS",
    "UNorMuon",
    "assign_groups",
    "aurora_polar",
    "aurora_polar_with_state",
    "build_optimizer",
    "dion_update",
    "lr_scale_factor",
    "polar",
    "riemannian_aurora_polar",
    "svd_polar",
]
