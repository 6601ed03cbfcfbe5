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


def run() -> None:
    """Entry point that turns our errors into a clean message and exit code 1."""
    try:
        main(standalone_mode=True)
    except ImmunoprofileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
