"""Plots (scanpy-style ``pl``): each plot in its own private module, re-exported here."""

from immunoprofile.pl._gating import gating, save_gating_plot, save_gating_pngs

__all__ = ["gating", "save_gating_plot", "save_gating_pngs"]
from immunoprofile.pl._compare import boxplots, effects_heatmap, trajectories, volcano

__all__ += ["boxplots", "effects_heatmap", "trajectories", "volcano"]
from immunoprofile.pl._embedding import abundance_bars, cluster_heatmap, ridges, umap  # noqa: E402

__all__ += ["abundance_bars", "cluster_heatmap", "ridges", "umap"]
from immunoprofile.pl._cba import standard_curves  # noqa: E402

__all__ += ["standard_curves"]
from immunoprofile.pl._clinical import clinical_trajectories, correlation_heatmap  # noqa: E402

__all__ += ["clinical_trajectories", "correlation_heatmap"]
