from .function import default_block_rows, default_chunk_rows, linear_cross_entropy
from .reference import linear_cross_entropy_reference

__all__ = ["default_block_rows", "default_chunk_rows", "linear_cross_entropy", "linear_cross_entropy_reference"]
