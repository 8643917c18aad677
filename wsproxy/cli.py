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
    """Run the proxy on a site.conf.

    \b
    SIGHUP          reload site.conf (a bad one is logged and the running config stays)
    SIGTERM/SIGINT  graceful stop: Close 1001 spread over server.close_spread, then grace
    """
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
@click.option("--admin-port", default=9901, show_default=True, help="admin API and stats page port")
def demo(port, backend_ports, host, admin_port) -> None:
    """Start two demo backends and the proxy in front of them; print the URLs."""
    from wsproxy import app
    from wsproxy.config import parse_config
    from wsproxy.demo import demo_config, start_backends, stop_backends

    ports = [int(p) for p in backend_ports.split(",")]
    config = parse_config(demo_config(port, ports, host=host, admin_port=admin_port), source="<demo>")

    async def backends():
        servers = await start_backends(host, ports)
        click.echo("")
        click.echo(f"  wsproxy demo: open http://{host}:{port}/  (chat over a WebSocket)")
        click.echo(f"  members: {', '.join(f'{host}:{p}' for p in ports)}  (balance: least_conn)")
        click.echo(f"  stats:   http://{host}:{admin_port}/  (members, health, connections; drain/enable)")
        click.echo(f"  metrics: http://{host}:{admin_port}/metrics    try: wsproxy ctl --admin {host}:{admin_port} status")
        click.echo("  Ctrl-C stops it.")
        click.echo("")
        return lambda: stop_backends(servers)

    app.run(config, extra_startup=backends)


@main.group()
@click.option("--admin", "admin", default="127.0.0.1:9901", show_default=True, envvar="WSPROXY_ADMIN",
              help="the admin API (server.admin) as HOST:PORT; env WSPROXY_ADMIN")
@click.option("--json", "as_json", is_flag=True, help="print the API's raw JSON answer")
@click.pass_context
def ctl(ctx: click.Context, admin, as_json) -> None:
    """Talk to a running proxy's admin API: status, drain, enable, weight, rebalance.

    \b
    wsproxy ctl status
    wsproxy ctl drain chat 127.0.0.1:9001 --spread 30s
    wsproxy ctl enable chat 127.0.0.1:9001
    wsproxy ctl weight chat 127.0.0.1:9001 3
    wsproxy ctl rebalance chat
    """
    ctx.obj = {"admin": admin, "json": as_json}


def _ctl_call(ctx: click.Context, method: str, path: str, body: dict | None = None, show=None) -> None:
    import json

    from wsproxy.admin.client import AdminClient, AdminError

    try:
        answer = AdminClient(ctx.obj["admin"]).call(method, path, body)
    except AdminError as exc:
        click.echo(f"wsproxy ctl: {exc}", err=True)
        sys.exit(1)
    if ctx.obj["json"] or show is None:
        click.echo(json.dumps(answer, indent=2))
    else:
        click.echo(show(answer))


@ctl.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the API's raw JSON answer")
@click.pass_context
def ctl_status(ctx, as_json) -> None:
    """Pools and members: state, connections across all workers, weight, health."""
    from wsproxy.admin.client import format_status

    if as_json:
        ctx.obj["json"] = True

    _ctl_call(ctx, "GET", "/api/pools", show=format_status)


@ctl.command("drain")
@click.argument("pool")
@click.argument("addr")
@click.option("--spread", default=None, help='close its WebSockets (1012) over this window, e.g. "10s" '
                                             "(default: the pool's drain_spread)")
@click.pass_context
def ctl_drain(ctx, pool, addr, spread) -> None:
    """Drain member ADDR of POOL: no new connections, WebSockets closed with 1012."""
    from wsproxy.admin.client import member_path

    body = {"spread": spread} if spread is not None else None
    _ctl_call(ctx, "POST", member_path(pool, addr, "drain"), body,
              show=lambda a: f"{pool} {addr}: draining, {a.get('conns')} connection(s) to close "
                             f"over {a.get('spread_s')}s")


@ctl.command("enable")
@click.argument("pool")
@click.argument("addr")
@click.pass_context
def ctl_enable(ctx, pool, addr) -> None:
    """Put member ADDR of POOL back in service (ends a drain)."""
    from wsproxy.admin.client import member_path

    _ctl_call(ctx, "POST", member_path(pool, addr, "enable"), show=lambda a: f"{pool} {addr}: {a.get('state')}")


@ctl.command("weight")
@click.argument("pool")
@click.argument("addr")
@click.argument("weight", type=int)
@click.pass_context
def ctl_weight(ctx, pool, addr, weight) -> None:
    """Set the weight of member ADDR of POOL (overrides the config's until a restart)."""
    from wsproxy.admin.client import member_path

    _ctl_call(ctx, "POST", member_path(pool, addr, "weight"), {"weight": weight},
              show=lambda a: f"{pool} {addr}: weight {a.get('weight')}")


@ctl.command("rebalance")
@click.argument("pool")
@click.pass_context
def ctl_rebalance(ctx, pool) -> None:
    """Shed connections of POOL's busiest members now (Close 1012), within its policy."""
    from urllib.parse import quote

    _ctl_call(ctx, "POST", f"/api/pools/{quote(pool, safe='')}/rebalance",
              show=lambda a: f"{pool}: {a.get('closes_planned')} close(s) planned of {a.get('conns')} "
                             f"connection(s), at most {a.get('rate_per_s')}/s")
