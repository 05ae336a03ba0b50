"""Entry point of the `certledger` command: assembles each package's sub-commands into one CLI.

This is the composition root. Packages never import each other's CLIs (dependencies point one way:
api -> oracle -> chain_client), so only this module sees them all, and nothing imports it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from api.cli import app as api_app
from chain_client.cli import DemoManifest, check_demo_manifest
from chain_client.cli import app as chain_app
from oracle.cli import devices_app, oracle_app

console = Console()


def demo(
    rpc_url: Annotated[
        str | None, typer.Option(envvar="CERTLEDGER_RPC_URL", help="JSON-RPC URL of the node.")
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option(help="MQTT broker for the devices (default: a throwaway mosquitto, if installed)."),
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Skip the oracle: devices' signatures go straight to the chain.")
    ] = False,
    manifest: DemoManifest = None,
) -> None:
    """Run the whole lifecycle (order, receipt through the IoT oracle, split, discount, maturity,
    settlement) and tell it."""
    check_demo_manifest(manifest, rpc_url)
    from chain_client.chain import connect
    from chain_client.demo import run_demo
    from chain_client.errors import CertledgerError
    from chain_client.settings import Settings
    from oracle.broker import Mosquitto, mosquitto_binary
    from oracle.mqtt import BrokerUnavailable
    from oracle.pipeline import MqttReceiptPipeline, PipelineFailed

    with tempfile.TemporaryDirectory(prefix="certledger-demo-") as tmp:
        workdir = Path(tmp)
        broker: Mosquitto | None = None
        url = broker_url
        if not direct and url is None and mosquitto_binary() is not None:
            broker = Mosquitto(workdir / "broker")
            broker.start()
            url = broker.url
        try:
            if direct or url is None:
                why = "--direct" if direct else "no MQTT broker (mosquitto not found; `make mosquitto`)"
                console.print(
                    f"[yellow]Receipt falls back to direct signing ({why}): the devices' signatures go "
                    "straight to the chain, without the gateway and relayer.[/]"
                )
                path = None
            else:
                console.print(
                    f"Receipt goes through the oracle: simulated RFID portals and weighbridge -> MQTT {url} "
                    "-> gateway checks and agreement -> relayer -> chain."
                )
                path = MqttReceiptPipeline(url, workdir)
            run_demo(connect(Settings(rpc_url=rpc_url)), console, receipt_path=path, manifest=manifest)
        except (CertledgerError, PipelineFailed, BrokerUnavailable) as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True)  # one line, whatever its length
            raise typer.Exit(1) from None
        finally:
            if broker is not None:
                broker.stop()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="certledger",
        help="Digital debt certificates: deploy, issue, split, transfer, discount, settle.",
        no_args_is_help=True,
    )
    # chain_client's commands sit at the top level: `certledger order open`. Its `demo` is
    # replaced by the one above, which sends the receipt through the oracle's pipeline.
    chain_app.registered_commands = [
        c for c in chain_app.registered_commands if (c.name or getattr(c.callback, "__name__", "")) != "demo"
    ]
    app.add_typer(chain_app)
    app.command("demo")(demo)
    app.add_typer(oracle_app, name="oracle")
    app.add_typer(devices_app, name="devices")
    # api's `serve` sits at the top level: `certledger serve`.
    app.add_typer(api_app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
