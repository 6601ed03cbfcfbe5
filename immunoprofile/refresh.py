"""After gates were corrected: the run's derived outputs rebuilt from its new tables."""

from __future__ import annotations

from pathlib import Path

from immunoprofile.run import Run


def refresh_outputs(run: str | Path | Run) -> None:
    """Rebuild the AnnData files and the report a run already has (nothing it has not).

    Parameters
    ----------
    run
        The run folder, after its subset table changed (a correction saved by
        ``flowjo apply``, the review app or :func:`immunoprofile.batch.apply_overrides`).
    """
    # start-up time: AnnData and the report load only when a run has them to rebuild
    from immunoprofile.assemble import assemble_run
    from immunoprofile.report import write_report

    run = Run.open(run)
    if run.timepoint_files():
        assemble_run(run.path)
    if run.report_path.is_file():
        write_report(run.path)
