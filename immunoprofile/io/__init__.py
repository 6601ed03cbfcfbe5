"""Input: FCS files and sample sheets."""

from immunoprofile.io.fcs import FCSSample, FCSWarning, read_fcs

__all__ = ["FCSSample", "FCSWarning", "read_fcs"]
