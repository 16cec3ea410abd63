from .function import rotary
from .reference import rotary_reference

__all__ = ["rotary", "rotary_reference"]
