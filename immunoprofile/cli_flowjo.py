"""``immunoprofile flowjo`` and ``immunoprofile review``: check and correct a run's gates,
in FlowJo or in the browser."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def flowjo() -> None:
    """Export a run as a FlowJo workspace; apply gates edited there as per-sample overrides."""


@flowjo.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--template", "-t", "template", required=True,
              help="The run's template whose gates to export (one workspace per template).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .wsp file to write (per-sample notes go to OUT.notes.csv).")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
def flowjo_export(run_dir: Path, template: str, out: Path, force: bool) -> None:
    """Write every sample the template gated, with its own gates, compensation, transforms
    and QC, as a FlowJo 10 workspace referencing the FCS files."""
    # start-up time: each command loads only what it runs
    from immunoprofile.flowjo import export_workspace

    notes = export_workspace(run_dir, template, out, force=force)
    done = notes[notes["exported"]]
    click.echo(f"wrote {out}: {len(done)} samples gated with {template}")
    for _, row in done[done["note"] != ""].iterrows():
        click.echo(f"  {row['sample_id']}: {row['note']}", err=True)


@flowjo.command("apply")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("workspace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--by", required=True, help="Who made the changes (written to audit.csv).")
@click.option("--reason", required=True, help="Why (written to audit.csv).")
@click.option("--template", "-t", "template", default=None,
              help="The template the workspace holds [default: its sample group].")
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Processes for regating the changed samples.")
def flowjo_apply(run_dir: Path, workspace: Path, by: str, reason: str, template: str | None,
                 workers: int | None) -> None:
    """Turn gates moved in WORKSPACE into per-sample overrides (RUN/overrides.yaml), one
    audit row each (RUN/audit.csv); regate those samples and rebuild the tables, AnnData and
    report."""
    # start-up time: each command loads only what it runs
    from immunoprofile.flowjo import apply_workspace

    added, notes = apply_workspace(run_dir, workspace, by=by, reason=reason,
                                   template=template, workers=workers)
    for note in notes:
        click.echo(f"  {note}", err=True)
    if added.empty:
        click.echo("no gate moved: nothing applied")
        return
    for _, row in added.iterrows():
        click.echo(f"{row['sample_id']} {row['template']}/{row['population']}: "
                   f"{row['old_count']} → {row['new_count']} events")
    click.echo(f"{len(added)} override(s) applied; audit in {Path(run_dir) / 'audit.csv'}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Local port (0: any free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the browser at the URL.")
def review(run_dir: Path, port: int, open_browser: bool) -> None:
    """Check and correct a run's gates in the browser, the samples that most need a look
    first (a local app on 127.0.0.1; corrections are overrides with an audit row)."""
    # start-up time: each command loads only what it runs
    from immunoprofile.review.server import serve

    serve(run_dir, port=port, open_browser=open_browser, say=click.echo)
