"""Encore's two models: GAT-BPR (implicit feedback) and the rating model (explicit ratings)."""

from models_src.models.gat_bpr import GATBPR
from models_src.models.rating import RatingModel

__all__ = ["GATBPR", "RatingModel"]
