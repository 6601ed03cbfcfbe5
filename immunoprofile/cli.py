"""The ``immunoprofile`` command line: a thin shell over the public Python API.

Exit codes: 0 success; 1 nothing usable or invalid input; 2 usage error (click);
3 partial success (some samples failed, see errors.csv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from immunoprofile._version import __version__
from immunoprofile.errors import ImmunoprofileError


def _parse_visits(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(
            f"visits must be comma-separated weeks, e.g. 0,2,4,12,24 ({exc})"
        ) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="immunoprofile")
def main() -> None:
    """Flow-cytometry immune profiling for clinical trials."""


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the cohort into (created if missing).")
@click.option("--patients-per-arm", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--events", type=click.IntRange(100, 10_000_000), default=50_000, show_default=True,
              help="Events per FCS file.")
@click.option("--visits", default="0,2,4,12,24", show_default=True,
              help="Visit weeks, comma-separated.")
@click.option("--seed", type=int, default=0, show_default=True)
def simulate(out: Path, patients_per_arm: int, events: int, visits: str, seed: int) -> None:
    """Simulate a randomised SLE trial cohort: FCS files, sample sheet and truth table."""
    from immunoprofile.datasets import simulate_cohort

    cohort = simulate_cohort(
        out, patients_per_arm=patients_per_arm, n_events=events,
        visits=_parse_visits(visits), seed=seed,
    )
    click.echo(cohort.summary())


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo_out"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, seed: int) -> None:
    """Run the whole pipeline on a small simulated trial cohort."""
    from immunoprofile.datasets import simulate_cohort

    click.echo(f"Simulating a demo trial cohort into {out} ...")
    cohort = simulate_cohort(out / "cohort", patients_per_arm=4, n_events=20_000, seed=seed)
    click.echo(cohort.summary())


@main.group()
def template() -> None:
    """Validate, import and export gating templates."""


@template.command("validate")
@click.argument("files", nargs=-1, required=True)
def template_validate(files: tuple[str, ...]) -> None:
    """Check templates (YAML files or shipped names); every problem is listed with its entry."""
    from immunoprofile.template import load_template

    failed = 0
    for f in files:
        try:
            t = load_template(f)
        except ImmunoprofileError as exc:
            failed += 1
            click.echo(f"INVALID {exc}", err=True)
            continue
        click.echo(f"ok {f}: template {t.name} v{t.version}, {len(t)} populations, "
                   f"markers {', '.join(t.markers())}")
    if failed:
        sys.exit(1)


@template.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="YAML template to write.")
@click.option("--group", default="All Samples", show_default=True,
              help="FlowJo sample group whose gates to import (.wsp only).")
@click.option("--sample", "sample_name", default=None,
              help="FlowJo sample whose gates to import (.wsp only; default: group's first).")
@click.option("--name", default=None, help="Template name (default: file name).")
def template_import(source: Path, out: Path, group: str, sample_name: str | None,
                    name: str | None) -> None:
    """Import a GatingML 2.0 file or a FlowJo 10 workspace (.wsp) as a YAML template."""
    from immunoprofile.template import write_template
    from immunoprofile.template.gatingml import read_flowjo, read_gatingml

    if source.suffix.lower() == ".wsp":
        t = read_flowjo(source, group=group, sample=sample_name, name=name)
    else:
        t = read_gatingml(source, name=name)
    write_template(t, out)
    click.echo(f"wrote {out}: {len(t)} populations")


@template.command("export")
@click.argument("template_file")
@click.option("--sample", "sample_path", type=click.Path(exists=True, dir_okay=False),
              required=True, help="FCS file whose panel binds marker names to channels.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="GatingML 2.0 file to write.")
def template_export(template_file: str, sample_path: str, out: Path) -> None:
    """Export a template bound to one file's panel as GatingML 2.0 (FlowKit reads it)."""
    from immunoprofile.template.gatingml import write_gatingml

    write_gatingml(template_file, out, sample=sample_path)
    click.echo(f"wrote {out}")


def run() -> None:
    """Entry point that turns our errors into a clean message and exit code 1."""
    try:
        main(standalone_mode=True)
    except ImmunoprofileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
