from .function import VocabShard, default_block_rows, default_chunk_rows, linear_cross_entropy
from .reference import linear_cross_entropy_reference

__all__ = ["VocabShard", "default_block_rows", "default_chunk_rows", "linear_cross_entropy",
           "linear_cross_entropy_reference"]
