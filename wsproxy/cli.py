"""The command line: ``wsproxy -c site.conf`` (run), check, version, demo."""

from __future__ import annotations

import platform
import sys

import click

from wsproxy import __version__

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"])
LOG_FORMATS = click.Choice(["text", "json"])


def _load(path: str):
    from wsproxy.config import load_config
    from wsproxy.errors import ConfigErrors

    try:
        return load_config(path)
    except ConfigErrors as exc:
        click.echo(f"{exc.source}: {len(exc.errors)} error(s)", err=True)
        for error in exc.errors:
            click.echo(f"  {error}", err=True)
        sys.exit(1)


def _load_plugins(config):
    """Load the config's plugins (a failure is reported like any config error)."""
    from wsproxy.errors import ConfigErrors
    from wsproxy.plugin_setup import load_chains

    try:
        return load_chains(config)
    except ConfigErrors as exc:
        click.echo(f"{exc.source}: {len(exc.errors)} error(s)", err=True)
        for error in exc.errors:
            click.echo(f"  {error}", err=True)
        sys.exit(1)


def _run(config_path: str, log_level: str | None, log_format: str | None) -> None:
    from wsproxy import app

    config = _load(config_path)
    app.run(config, log_level=log_level, log_format=log_format)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="site.conf to run")
@click.option("--log-level", type=LOG_LEVELS, default=None, help="overrides server.log_level")
@click.option("--log-format", type=LOG_FORMATS, default=None, help="text (default) or json lines")
@click.version_option(__version__, "-V", "--version", message="wsproxy %(version)s")
@click.pass_context
def main(ctx: click.Context, config_path, log_level, log_format) -> None:
    """wsproxy: a WebSocket-aware reverse proxy and load balancer.

    \b
    wsproxy -c site.conf           run the proxy (same as `wsproxy run -c site.conf`)
    wsproxy check -c site.conf     validate and print the plan
    wsproxy demo                   two demo backends + the proxy, nothing to set up
    """
    if ctx.invoked_subcommand is not None:
        return
    if not config_path:
        click.echo(ctx.get_help())
        ctx.exit(2)
    _run(config_path, log_level, log_format)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--log-level", type=LOG_LEVELS, default=None, help="overrides server.log_level")
@click.option("--log-format", type=LOG_FORMATS, default=None, help="text (default) or json lines")
def run(config_path, log_level, log_format) -> None:
    """Run the proxy on a site.conf."""
    _run(config_path, log_level, log_format)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
def check(config_path) -> None:
    """Validate a site.conf without binding anything; print the plan, or every error."""
    from wsproxy.config import format_plan

    config = _load(config_path)
    chains = _load_plugins(config)
    click.echo(format_plan(config, chains))
    click.echo(f"{config_path}: OK")


@main.command()
def version() -> None:
    """Print the version and which build (C accelerators or pure Python) is running."""
    from wsproxy import _speedups

    build = "C accelerators" if _speedups.IMPLEMENTATION == "c" else "pure Python"
    click.echo(f"wsproxy {__version__} ({_speedups.IMPLEMENTATION} build)")
    click.echo(f"frame codec, masking, HTTP head glue and relay core: {build}")
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    click.echo(f"{platform.python_implementation()} {platform.python_version()}, {loop}")


@main.command()
@click.option("--port", default=8080, show_default=True, help="proxy port")
@click.option("--backend-ports", default="9001,9002", show_default=True, help="two demo member ports")
@click.option("--host", default="127.0.0.1", show_default=True)
def demo(port, backend_ports, host) -> None:
    """Start two demo backends and the proxy in front of them; print the URL."""
    from wsproxy import app
    from wsproxy.config import parse_config
    from wsproxy.demo import demo_config, start_backends, stop_backends

    ports = [int(p) for p in backend_ports.split(",")]
    config = parse_config(demo_config(port, ports, host=host), source="<demo>")

    async def backends():
        servers = await start_backends(host, ports)
        click.echo("")
        click.echo(f"  wsproxy demo: open http://{host}:{port}/  (chat over a WebSocket)")
        click.echo(f"  members: {', '.join(f'{host}:{p}' for p in ports)}  (balance: least_conn)")
        click.echo("  Ctrl-C stops it.")
        click.echo("")
        return lambda: stop_backends(servers)

    app.run(config, extra_startup=backends)
