"""The root element of an XML file, read safely and cheaply (to tell gating file kinds apart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET


def root_element(path: str | Path, *, allow_dtd: bool = False) -> Any | None:
    """The first (root) element of an XML file, without parsing the rest.

    Parameters
    ----------
    path
        Any file.
    allow_dtd
        Accept a ``<!DOCTYPE>`` (FlowJo 9 writes one); entities and external references are
        refused either way.

    Returns
    -------
    xml.etree.ElementTree.Element or None
        The root element (its tag and attributes; children not read), or None for a file
        that is unreadable, not XML or declares entities.
    """
    try:
        with open(path, "rb") as fh:
            for _, elem in SafeET.iterparse(fh, events=("start",), forbid_dtd=not allow_dtd,
                                            forbid_entities=True, forbid_external=True):
                return elem
    except (DefusedXmlException, SafeET.ParseError, OSError, ValueError):
        return None
    return None
