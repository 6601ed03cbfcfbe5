"""Input: FCS files and sample sheets."""

from immunoprofile.io.fcs import FCSSample, read_fcs

__all__ = ["FCSSample", "read_fcs"]
