"""The ``ppd`` command: a thin layer that maps flags onto the library's config objects.

Each group of commands lives in ``ppdecode/commands/<name>.py`` and registers itself on the app.
Errors a user can fix (``ValueError``) are printed as one line, without a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from ppdecode.commands import bench, draft, generate, prepare, serve, train, tree

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Parallel Prompt Decoding")


@app.callback()
def _root() -> None:
    """Parallel Prompt Decoding: faster, lossless text generation with trained prompt tokens."""


for module in (generate, prepare, train, draft, tree, bench, serve):
    module.register(app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()  # typer reports usage errors itself and exits
    except ValueError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
