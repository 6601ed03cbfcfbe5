"""Tools (scanpy's ``tl``): clustering, embedding, comparisons across arms over time."""

from immunoprofile.tl._differential import differential_abundance, differential_state
from immunoprofile.tl._response import ResponderRule, response

__all__ = ["ResponderRule", "differential_abundance", "differential_state", "response"]
