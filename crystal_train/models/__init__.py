"""Crystal graph models; each maps a GraphBatch to one prediction per crystal."""

from crystal_train.models.cgcnn import CGCNN
from crystal_train.models.schnet import SchNet

__all__ = ["CGCNN", "SchNet"]
