"""The wcompress command line. Each command parses options, calls the library, and prints."""

import json
import os
import sys
import zipfile

import click

from . import __version__
from .errors import WcompressError

_USER_ERRORS = (WcompressError, OSError, ValueError, KeyError, zipfile.BadZipFile)


class Cli(click.Group):
    """Turns every expected failure into one line on stderr and exit code 2 (--debug shows the traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
            if ctx.params.get("debug") or os.environ.get("WCOMPRESS_DEBUG"):
                raise
            click.echo(f"wcompress: error: {_one_line(exc)}", err=True)
            ctx.exit(2 if _is_user_error(exc) else 1)


def _is_user_error(exc):
    if isinstance(exc, _USER_ERRORS):
        return True
    from .io.tfenv import tf

    return isinstance(exc, tf.errors.OpError)


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wcompress")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def cli(ctx, debug):
    """Compress trained TensorFlow checkpoints and Keras models, and report the real bytes on disk."""
    ctx.ensure_object(dict)["debug"] = debug


def output_options(f):
    f = click.option("--force", is_flag=True, help="Overwrite an existing output.")(f)
    f = click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the result.")(f)
    return f


def model_options(f):
    f = click.option("--unsafe", is_flag=True, help="Allow Keras models with Lambda layers or custom code.")(f)
    f = click.option("--order", "order_file", type=click.Path(exists=True, dir_okay=False),
                     help="File with one layer name per line: overrides the layer order.")(f)
    return f


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def emit_json(data):
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command()
@click.argument("model", type=click.Path())
@model_options
@json_option
@click.option("--plot", "plot_path", type=click.Path(), help="Also draw per-layer weight histograms to a PNG.")
def profile(model, order_file, unsafe, as_json, plot_path):
    """Per-tensor table: role, shape, bytes and share, value range, zeros, histogram; with totals."""
    from .io import open_model
    from .profile import profile_model

    store = open_model(model, order_file=order_file)
    result = profile_model(store, show_progress=not as_json)
    if plot_path:
        from .plot import plot_histograms

        plot_histograms(result, plot_path)
    if as_json:
        emit_json(result)
        return
    from .render import console, profile_table

    profile_table(result)
    if plot_path:
        console.print(f"histograms written to {plot_path}")


@cli.command()
@click.argument("model", type=click.Path())
@output_options
@model_options
@json_option
def strip(model, output, force, order_file, unsafe, as_json):
    """Drop optimizer slots and step counters; write the same format, smaller."""
    from .io import open_model
    from .plugins import get_pass
    from .runner import run_passes

    store = open_model(model, order_file=order_file)
    result = run_passes(store, [get_pass("strip").new()], output, force=force, show_progress=not as_json)
    if as_json:
        emit_json(result.as_dict())
        return
    from .render import size_change

    dropped = [t for t in result.tensors if t.dropped]
    click.echo(f"dropped {len(dropped)} of {len(result.tensors)} tensors "
               f"({sum(t.size for t in dropped):,} values of training state)")
    size_change(f"{store.format} {model} → {result.output.path}", result.input_bytes, result.output_bytes)


@cli.command("plugins")
@json_option
def plugins_command(as_json):
    """List the plugins that loaded, where from, and the passes each registered."""
    from .plugins import plugin_table

    rows = plugin_table()
    if as_json:
        emit_json(rows)
        return
    from .render import plugins_table

    plugins_table(rows)


def _register_plugin_commands():
    from .plugins import load_plugins, pm

    load_plugins()
    pm.hook.register_commands(cli=cli)


def main():
    try:
        _register_plugin_commands()
    except WcompressError as exc:
        click.echo(f"wcompress: error: {exc}", err=True)
        sys.exit(2)
    cli(prog_name="wcompress")


if __name__ == "__main__":
    main()
