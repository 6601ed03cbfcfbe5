"""Starting the review app: checks, the Bokeh server on 127.0.0.1, the URL."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.review.app import ReviewApp
from immunoprofile.review.editing import RunContext
from immunoprofile.run import Run


def check_writable(run: Run) -> None:
    """Refuse a run folder the app could not save corrections into.

    Raises
    ------
    ImmunoprofileError
        Not a gated run, or the folder (or its overrides/audit files) cannot be written.
    """
    if not run.manifest_path.is_file():
        raise ImmunoprofileError(f"{run.path} is not a gated run (no run.json): gate it first")
    targets = [run.path, *(p for p in (run.overrides_path, run.audit_path) if p.exists())]
    for target in targets:
        if not os.access(target, os.W_OK):
            raise ImmunoprofileError(
                f"{target} is not writable: the review saves corrections into the run "
                "(overrides.yaml, audit.csv, the tables); copy the run somewhere writable or "
                "fix its permissions")
    try:  # permissions can say yes where the file system says no (read-only mounts)
        with tempfile.NamedTemporaryFile(dir=run.path, prefix=".review-check-"):
            pass
    except OSError as exc:
        raise ImmunoprofileError(f"{run.path} is not writable ({exc.strerror}): copy the run "
                                 "somewhere writable") from exc


def serve(run_dir: str | Path, *, port: int = 8765, open_browser: bool = False,
          say: Callable[[str], None] = print) -> None:
    """Serve the review app for a run on http://127.0.0.1:PORT until interrupted.

    Parameters
    ----------
    run_dir
        A gated run folder (written to when a correction is saved).
    port
        Local port (0: any free one).
    open_browser
        Open the default browser at the URL.
    say
        Where the URL is printed.
    """
    run = Run.open(run_dir)
    check_writable(run)
    context = RunContext.open(run)
    ranked = context.ranking  # ranked once, before the first tab asks
    if not port:  # any free port, known before the server says which origins it accepts
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    app = Application(FunctionHandler(partial(_document, context)))
    server = Server({"/": app}, address="127.0.0.1", port=port, num_procs=1,
                    allow_websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"])
    server.start()
    url = f"http://127.0.0.1:{server.port}/"
    say(f"review {run.path} ({len(ranked)} samples) at {url} (Ctrl+C to stop)")
    if open_browser:
        server.io_loop.add_callback(server.show, "/")
    server.io_loop.start()


def _document(context: RunContext, doc) -> None:
    ReviewApp(context, doc)
