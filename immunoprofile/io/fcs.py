"""Reading FCS 2.0, 3.0 and 3.1 files.

IMPLEMENTATION PENDING (issue 2): this module's public interface is fixed here;
`read_fcs` is being implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(eq=False)
class FCSSample:
    """One data set of an FCS file, decoded to linear values.

    Attributes
    ----------
    path
        The file the data came from.
    events
        ``(n_events, n_channels)`` float32 array of linear values, as FlowKit's ``Sample``
        calls raw: log-amplified ($PnE) channels decoded and $PnG gains divided out.
    channels
        One row per channel (in file order, index 0..n-1) with columns ``pnn`` ($PnN),
        ``pns`` ($PnS, "" if absent), ``pnr`` ($PnR as float), ``pne`` ($PnE as "f1,f2"),
        ``png`` ($PnG as float, 1.0 if absent), ``pnb`` (bits) and ``marker`` (the canonical
        marker name resolved by :mod:`immunoprofile.panel`, or "" when none is recognised).
    metadata
        All TEXT keywords, lower-cased names without the leading ``$``, values as strings.
    spillover
        The $SPILLOVER / $SPILL / SPILL matrix as a square DataFrame labelled by channel name
        ($PnN) on both axes, or None when the file has none.
    dataset
        Which data set of a multi-data-set file this is (0 for the first).
    warnings
        Quirks met while reading (also issued through :mod:`warnings`).
    """

    path: Path
    events: np.ndarray
    channels: pd.DataFrame
    metadata: dict[str, str]
    spillover: pd.DataFrame | None = None
    dataset: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def n_events(self) -> int:
        """Number of events (rows of :attr:`events`)."""
        return int(self.events.shape[0])

    @property
    def channel_names(self) -> list[str]:
        """The $PnN names in file order."""
        return list(self.channels["pnn"])

    @property
    def acquisition_date(self) -> str | None:
        """$DATE as written in the file (None when absent)."""
        return self.metadata.get("date") or None

    @property
    def cytometer(self) -> str | None:
        """$CYT, the instrument that acquired the file (None when absent)."""
        return self.metadata.get("cyt") or None


def read_fcs(path: str | Path, *, dataset: int = 0) -> FCSSample:
    """Read one data set of an FCS file."""
    raise NotImplementedError
