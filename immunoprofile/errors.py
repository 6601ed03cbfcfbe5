"""Exception types raised by immunoprofile.

Every error a user can cause by feeding bad input derives from :class:`ImmunoprofileError`,
so a batch runner can catch exactly our errors and let programming bugs surface.
"""

from __future__ import annotations


class ImmunoprofileError(Exception):
    """Base class of every error immunoprofile raises on bad input."""


class FCSError(ImmunoprofileError):
    """An FCS file is truncated, corrupt, not an FCS file, or cannot be decoded.

    The message always names the file and what is wrong with it.
    """


class PanelError(ImmunoprofileError):
    """A marker cannot be resolved to a channel: it is missing or ambiguous."""


class TemplateError(ImmunoprofileError):
    """A gating template is malformed or does not fit a sample."""


class SampleSheetError(ImmunoprofileError):
    """A sample sheet has structural problems (all of them are listed in the message)."""
