"""Entry point of the `certledger` command: assembles each package's sub-commands into one CLI.

This is the composition root. Packages never import each other's CLIs (dependencies point one way:
api -> oracle -> chain_client), so only this module sees them all, and nothing imports it.
"""

from __future__ import annotations

import typer

from chain_client.cli import app as chain_app


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="certledger",
        help="Digital debt certificates: deploy, issue, split, transfer, discount, settle.",
        no_args_is_help=True,
    )
    # chain_client's commands sit at the top level: `certledger demo`, `certledger order open`.
    app.add_typer(chain_app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
