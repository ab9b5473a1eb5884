"""The wcompress command line. Each command parses options, calls the library, and prints."""

import contextlib
import json
import lzma
import os
import signal
import struct
import sys
import threading
import warnings
import zipfile
import zlib

import click

from wcompress import __version__
from wcompress.errors import TensorFlowMissing, WcompressError, WcompressWarning, root_cause
from wcompress.formats.container.coders import available_codecs

# What damaged or hostile input makes the libraries we read with raise (h5py's RuntimeError, a
# deeply nested JSON's RecursionError, a truncated file's EOFError, protobuf's DecodeError...).
_USER_ERRORS = (WcompressError, OSError, ValueError, KeyError, zipfile.BadZipFile, RuntimeError, IndexError,
                EOFError, TypeError, lzma.LZMAError, zlib.error, struct.error)
_USER_ERROR_NAMES = {"DecodeError", "EncodeError"}


class Cli(click.Group):
    """Turns every expected failure into one line on stderr and exit code 2 (--debug shows the traceback)."""

    def invoke(self, ctx):
        # Click empties these before the command runs: kept to name the input in an error line.
        command_line = [*getattr(ctx, "_protected_args", []), *ctx.args][1:]
        try:
            with warnings.catch_warnings(), _terminate_cleanly():
                _SHOWN.clear()
                warnings.simplefilter("always", WcompressWarning)
                warnings.simplefilter("ignore", RuntimeWarning)  # numpy on garbage values: the error says why
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except click.UsageError as exc:
            if ctx.params.get("debug"):
                raise
            where = f" (see 'wcompress {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
            click.echo(f"wcompress: error: {exc.format_message()}{where}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
            if ctx.params.get("debug") or os.environ.get("WCOMPRESS_DEBUG"):
                raise
            click.echo(f"wcompress: error: {_one_line(exc, _input_path(command_line))}", err=True)
            ctx.exit(2 if _is_user_error(exc) else 1)


_SHOWN = []  # this command's warnings, once each: on stderr as they come, and in --json


def _show_warning(message, category, *args, **kwargs):
    if issubclass(category, WcompressWarning) and str(message) not in _SHOWN:
        _SHOWN.append(str(message))
        click.echo(f"wcompress: warning: {message}", err=True)


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every temp file and staging folder is removed."""
    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _input_path(command_line):
    """The first path argument of the command that failed, to name the file in an error."""
    return next((a for a in command_line if not a.startswith("-")), None)


def _is_user_error(exc):
    if isinstance(exc, _USER_ERRORS) or type(exc).__name__ in _USER_ERROR_NAMES:
        return True
    from wcompress.formats.tfenv import loaded, tf

    return loaded() and isinstance(exc, tf.errors.OpError)  # not imported: no TensorFlow error possible


def _one_line(exc, path=None):
    """The cause in one line, naming the input when the library's own message does not."""
    line = root_cause(exc, limit=500)
    if (not isinstance(exc, WcompressError) or isinstance(exc, TensorFlowMissing)) and path and path not in line:
        line = f"{path}: {line}"
    return line


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wcompress")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def cli(ctx, debug):
    """Compress trained TensorFlow checkpoints and Keras models, and report the real bytes on disk."""
    ctx.ensure_object(dict)["debug"] = debug


def output_options(f):
    f = click.option("--force", is_flag=True, help="Replace an existing output (a file, or a checkpoint's or "
                     "SavedModel's own files; never a folder holding anything else).")(f)
    f = click.option("-o", "--output", type=click.Path(), help="Where to write the result: its suffix picks the "
                     "format (.keras, .h5, .weights.h5); a folder (or DIR/) means inside it, under the input's "
                     "name. Default: beside the input, NAME.TAG.EXT.")(f)
    return f


def model_options(f):
    # No --unsafe here: these commands read weights and configs as data and never deserialize a model.
    f = click.option("--order", "order_file", type=click.Path(exists=True, dir_okay=False),
                     help="File with one layer name per line: overrides the layer order.")(f)
    return f


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def emit_json(data):
    """Print a command's --json document; the warnings it showed on stderr are in it too."""
    if isinstance(data, dict) and _SHOWN:  # beside the findings some commands list themselves
        own = data.get("warnings") or []
        data = {**data, "warnings": list(own) + [w for w in _SHOWN if w not in own]}
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command()
@click.argument("model", type=click.Path())
@model_options
@json_option
@click.option("--plot", "plot_path", type=click.Path(), help="Also draw per-layer weight histograms to a PNG.")
@click.option("--wide", is_flag=True,
              help="Show every column whatever the terminal's width (a narrow terminal drops span, max, min, "
                   "histogram, std, |w|<1e-3 in that order to keep the tensor names readable).")
def profile(model, order_file, as_json, plot_path, wide):
    """Per-tensor table: role, shape, bytes and share, value range, zeros, histogram; with totals."""
    from wcompress import api

    result = api.profile(model, order_file=order_file, progress=not as_json).to_dict()
    if plot_path:
        from wcompress.plot import plot_histograms

        plot_histograms(result, plot_path)
    if as_json:
        emit_json(result)
        return
    from wcompress.render import console, profile_table

    profile_table(result, wide=wide)
    if plot_path:
        console.print(f"histograms written to {plot_path}")


@cli.command()
@click.argument("model", type=click.Path())
@output_options
@model_options
@json_option
def strip(model, output, force, order_file, as_json):
    """Drop optimizer slots and step counters; write the same format, smaller."""
    from wcompress import api

    result = api.strip(model, output=output, force=force, order_file=order_file, progress=not as_json)
    if as_json:
        emit_json(result.to_dict())
        return
    from wcompress.render import strip_summary

    strip_summary(result, model)


def container_options(f):
    f = click.option("--codec", type=click.Choice(available_codecs()), default="auto", show_default=True,
                     help="auto: each stream coded by the smallest of raw, zstd and pcodec; none: raw streams; "
                          "gzip/lzf: an HDF5 filter over raw streams.")(f)
    f = click.option("--values", "values_dtype", type=click.Choice(["float32", "float16", "int8", "int4", "ecq"]),
                     default="float32", show_default=True,
                     help="How non-zero float values are stored: as they are, as float16, or (lossy) as int8/int4 "
                          "codes with a float32 scale per output channel, or as ecq levels (a step per output "
                          "channel set by --qp, the levels range-coded with context models), for float tensors of "
                          "rank 2 and more (biases and normalisation stay float32 with int8/int4, float16 with ecq, or, "
                          "with ecq and --data, levels at one step per vector set by its measured sensitivity); "
                          "restore then writes dequantized values.")(f)
    f = click.option("--qp", type=int, help="With --values ecq: the quality parameter. Each output channel's step "
                     "is 2^(QP/4) x its output's RMS scale (from --data's inputs, else its weights'): QP 0 stores about "
                     "2 bits per weight, and every 4 more double the step (about one bit less).")(f)
    return f


@cli.command()
@click.argument("model", type=click.Path())
@output_options
@click.option("--method", help="flat, triangular or relative (or a plugin's thresholding method).")
@click.option("--delta", type=float, help="flat: fraction of the smallest layer span; relative: fraction to zero.")
@click.option("--sparsity", type=float, help="relative: the fraction of each layer to zero (same as --delta).")
@click.option("--dconv", type=float, help="triangular: fraction of the first layer's span.")
@click.option("--dfc", type=float, help="triangular: fraction of the last layer's span.")
@click.option("--include", multiple=True, help="Only tensors or layers matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Never tensors or layers matching this glob (repeatable).")
@click.option("--layer", "layers", multiple=True, help="Per-layer override 'GLOB=DELTA' (repeatable).")
@click.option("--min-size", type=click.IntRange(min=0), help="Skip tensors with fewer than N weights (default: "
              "fewer than 1,024, lowered so that at most 5% of the eligible weights are skipped; tensors named by "
              "--include are kept; 0 sparsifies every eligible tensor).")
@click.option("--plan", "plan_path", type=click.Path(), help="Read exact thresholds from this JSON/YAML plan "
              "(with --dry-run: write the plan there).")
@click.option("--dry-run", is_flag=True, help="Print thresholds and sparsity per tensor; write nothing but --plan.")
@click.option("--pack", is_flag=True, help="Write the sparse container instead of the input's format.")
@click.option("--data", help="wanda, sparsegpt: calibration inputs (DATA.npz or module:function); weights are scored by "
              "their inputs over them (wanda: |w| x input norm; sparsegpt: the input Hessian, kept weights updated).")
@click.option("--groups", type=click.Choice(["row", "layer"]), help="wanda: compare weights within each output "
              "channel (row, default) or over the whole kernel (layer).")
@click.option("--pattern", help="N:M (e.g. 2:4) with relative, wanda or sparsegpt: keep the N best-scored weights in "
              "every group of M consecutive inputs of each kernel (the sparsity is then 1 - N/M); kernels whose "
              "inputs (the kernel's rows: window positions x input channels) are not a multiple of M stay dense.")
@container_options
@model_options
@json_option
def sparsify(model, output, force, method, delta, sparsity, dconv, dfc, include, exclude, layers, min_size,
             plan_path, dry_run, pack, data, groups, pattern, codec, values_dtype, qp, order_file, as_json):
    """Zero small weights per layer, no retraining: every |w| at or under its layer's threshold, set by a
    flat (δ × the smallest layer span), triangular (--dconv on the first layer to --dfc on the last,
    linear in between) or relative (the δ quantile of the layer's |w|) rule. See docs/methods.md.

    Example: wcompress sparsify model.ckpt --method triangular --dconv 0.1 --dfc 0.3 -o sparse.ckpt
    """
    from wcompress import api

    result = api.sparsify(model, method=method, delta=delta, sparsity=sparsity, dconv=dconv, dfc=dfc, include=include,
                          exclude=exclude, layers=layers, min_size=min_size, plan=plan_path, dry_run=dry_run,
                          pack=pack, data=data, groups=groups, pattern=pattern, codec=codec, values=values_dtype,
                          qp=qp, output=output, force=force, order_file=order_file, progress=not as_json)
    if as_json:
        emit_json(result.to_dict())
        return
    from wcompress.render import size_change, sparsity_table

    sparsity_table(result.summary, result.outcomes)
    if result.run:
        size_change(f"{result.run.input_format} → {result.run.output.path}", result.run.input_bytes,
                    result.run.output_bytes)


@cli.command()
@click.argument("model", type=click.Path())
@output_options
@container_options
@click.option("--data", help="With --values int8|int4|ecq: calibration inputs (DATA.npz or module:function) to "
              "compensate each kernel's rounding error GPTQ-style; the model must run (a Keras model or a TF graph).")
@model_options
@json_option
def pack(model, output, force, codec, values_dtype, qp, data, order_file, as_json):
    """Write any model into the sparse HDF5 container: each tensor in its smallest encoding."""
    from wcompress import api

    result = api.pack(model, output=output, values=values_dtype, codec=codec, data=data, force=force,
                      order_file=order_file, progress=not as_json, qp=qp)
    if as_json:
        emit_json(result.to_dict())
        return
    from wcompress.render import fitted_vectors, size_change

    size_change(f"{result.input_format} {model} → container {result.output.path}", result.input_bytes,
                result.output_bytes)
    if "fitted_vectors" in result.summaries:
        fitted_vectors(result.summaries["fitted_vectors"])


@cli.command("restore")
@click.argument("container", type=click.Path(exists=True, dir_okay=False))
@output_options
@click.option("--unsafe", is_flag=True, help="Converting to another Keras format deserializes the model: allow "
              "Lambda layers and custom code.")
@json_option
def restore_command(container, output, force, unsafe, as_json):
    """Turn a container back into its original format (bit-exact for float32 values)."""
    from wcompress import api

    result = api.restore(container, output=output, force=force, unsafe=unsafe)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"restored {result.format} {result.output}: {result.output_bytes:,} B in {len(result.output_files)} "
               f"files (from a {result.container_bytes:,} B container)")


@cli.command("report")
@click.argument("path", type=click.Path())
@click.option("--against", type=click.Path(), help="The original (dense) model, to compare sizes on disk.")
@click.option("--no-gzip", is_flag=True, help="Skip measuring gzip of the dense file (slow on big models).")
@json_option
def report_command(path, against, no_gzip, as_json):
    """Per tensor: sparsity, encoding, bytes original / stored, information bound; totals against gzip."""
    from wcompress import api

    result = api.report(path, against=against, gzip=not no_gzip).to_dict()
    if as_json:
        emit_json(result)
        return
    from wcompress.render import report_table

    report_table(result)




@cli.command()
@click.argument("model", type=click.Path())
@output_options
@click.option("--bits", type=int, default=8, show_default=True, help="Bits per weight code: 8, or 4 for Keras "
              "models (TF1 variables hold whole bytes: pack --values int4 stores 4-bit codes of any model).")
@click.option("--data", help="Calibration inputs (DATA.npz or module:function): each kernel's rounding error is "
              "compensated through its layer's input statistics (GPTQ-style); without, round to nearest.")
@click.option("--unsafe", is_flag=True, help="Load Keras models without safe_mode (Lambda layers, custom code).")
@model_options
@json_option
def quantize(model, output, force, bits, data, unsafe, order_file, as_json):
    """Store kernels as int8 codes with a float32 scale per output channel; the output loads in stock
    TensorFlow / Keras.

    \b
    - TF1 checkpoint with .meta: int8 variables, read through a Cast and a Mul by a Const of their
      scales; import_meta_graph + saver.restore runs it. Training state is dropped.
    - Keras model (.keras, .h5): Keras's own int8 (or --bits 4: int4) format (.keras), for the layers
      Keras quantizes (Dense, EinsumDense, Embedding); the others stay float, listed with their share
      of the bytes. --data GPTQ-rounds int8 Dense kernels.
    - Other formats are refused: pack --values int8|int4 quantizes any model into the container
      (restore writes it back dequantized).
    """
    from wcompress import api

    result = api.quantize(model, bits=bits, data=data, output=output, force=force, unsafe=unsafe,
                          order_file=order_file, progress=not as_json)
    if as_json:
        emit_json(result.to_dict())
        return
    from wcompress.render import quantize_summary

    quantize_summary(result.to_dict(), model, bits, calibrated=data is not None)


@cli.command()
@click.argument("model", type=click.Path())
@output_options
@click.option("--cover", type=float, help="Cast the fewest largest tensors holding this share of the bytes "
              "(default 0.98).")
@click.option("--min-bytes", type=int, help="Cast every float32 tensor of at least this many bytes.")
@click.option("--tensors", multiple=True, help="Cast tensors or layers matching this glob (repeatable).")
@click.option("--on-overflow", type=click.Choice(["keep", "clip"]), default="keep", show_default=True,
              help="Values beyond float16's range: keep that tensor float32, or clip to ±65504.")
@model_options
@json_option
def fp16(model, output, force, cover, min_bytes, tensors, on_overflow, order_file, as_json):
    """Cast the largest float32 tensors to float16; the output loads in stock TensorFlow/Keras.

    \b
    What loads where (training state is dropped in every case):
    - .keras, Keras .h5: float16 dtype policy on the cast layers; keras.models.load_model.
    - .weights.h5, weights-only .h5: float16 storage; model.load_weights casts it.
    - TF1 checkpoint with .meta (VariableV2 or resource variables): float16 variables cast back
      where read, new Saver; import_meta_graph + saver.restore.
    - SavedModel (simple_save, tf.saved_model.save, model.export): float16 variables cast back
      where read; tf.saved_model.load and the TF1 loader.
    - TF2 object checkpoints and TF1 checkpoints without .meta are refused: a float32 model
      cannot restore float16 tensors. Use pack --values float16, or save the model as .keras.
    """
    from wcompress import api

    result = api.fp16(model, cover=cover, min_bytes=min_bytes, tensors=tensors, on_overflow=on_overflow,
                      output=output, force=force, order_file=order_file, progress=not as_json)
    if as_json:
        emit_json(result.to_dict())
        return
    from wcompress.render import fp16_summary

    fp16_summary(result.to_dict(), model, on_overflow)


@cli.command()
@click.argument("checkpoints", nargs=-1, type=click.Path())
@output_options
@click.option("--dir", "folder", type=click.Path(), help="Average the checkpoints of a training folder …")
@click.option("--steps", help="… whose step (the -NNNN suffix) is in FROM:TO, inclusive; either end may be empty.")
@click.option("--keep-optimizer", is_flag=True, help="Keep optimizer state (from the last checkpoint).")
@json_option
def average(checkpoints, output, force, folder, steps, keep_optimizer, as_json):
    """Average checkpoints tensor by tensor (float64 sums, original dtype); TF1, TF2, Keras weights.

    Example: wcompress average --dir train/ --steps 100000:150000 -o avg/model.ckpt
    """
    from wcompress import api

    result = api.average(checkpoints, output=output, folder=folder, steps=steps, keep_optimizer=keep_optimizer,
                         force=force).to_dict()
    if as_json:
        emit_json(result)
        return
    from wcompress.render import average_summary

    average_summary(result)


def custom_objects_option(f):
    return click.option("--custom-objects", metavar="FILE.py|MODULE[:ATTR]", help="What Keras needs to load the "
                        "model (custom layers, activations): a FILE.py or module (its public functions and "
                        "classes, or its custom_objects dict), or module:attr (a dict of name -> object, or one "
                        "object). Map a Keras 2 '<lambda>' with custom_objects = {'<lambda>': fn}.")(f)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@output_options
@click.option("--weights", help="Comma-separated output weights, one per model (default: equal).")
@click.option("--no-normalize", is_flag=True, help="Allow weights that do not sum to 1.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="float16 applies the fp16 pass to the merged model.")
@click.option("--budget", help="Fail, writing nothing, if the merged files would exceed this size (e.g. 1GB).")
@click.option("--input-tensor", "input_name", help="TF graphs: the input placeholder every member shares "
              "(default: the only float placeholder the output needs).")
@click.option("--output-tensor", "output_name", help="TF graphs: the output tensor of each member (default: the "
              "inference graph's output that depends on every weight the others do; ambiguous ones are listed).")
@click.option("--feed", "feeds", multiple=True, help="TF graphs: NAME=VALUE fixes a placeholder to a constant "
              "(bool placeholders, e.g. is_training flags, default to false).")
@click.option("--unsafe", is_flag=True, help="Allow Keras models with Lambda layers or custom code.")
@custom_objects_option
@json_option
def merge(models, output, force, weights, no_normalize, dtype, budget, input_name, output_name, feeds,
          unsafe, custom_objects, as_json):
    """Merge models into one with a weighted-sum output: Keras -> one .keras, TF1 graphs -> one graph.

    Example: wcompress merge a.ckpt b.ckpt --weights 0.6,0.4 --dtype float16

    The merged model is run once on a batch of zeros before it is written: one that cannot run is
    never written.
    """
    from wcompress import api

    parsed = None
    if weights:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError as exc:
            raise WcompressError(f"--weights takes numbers separated by commas, got {weights!r}") from exc
    result = api.merge(list(models), output, weights=parsed, dtype=dtype, budget=budget, normalize=not no_normalize,
                       input_name=input_name, output_name=output_name, feeds=feeds, unsafe=unsafe,
                       custom_objects=custom_objects, force=force).to_dict()
    if as_json:
        emit_json(result)
        return
    from wcompress.render import merge_summary

    merge_summary(result)


def eval_options(f):
    f = custom_objects_option(f)
    f = click.option("--model-code", help="module:function (or FILE.py:function) returning the Keras model to load a "
                     "weights-only file (.weights.h5, Keras 2 weights .h5, TF2 checkpoint) into.")(f)
    f = click.option("--batch-size", type=int, default=256, show_default=True, help="Examples per batch.")(f)
    f = click.option("--feed", "feeds", multiple=True, help="TF graphs: NAME=VALUE for an extra placeholder "
                     "(bool ones, e.g. is_training flags, default to false).")(f)
    f = click.option("--output-tensor", "output_name", help="TF graphs / SavedModels: the output tensor or key "
                     "(TF graphs: inferred as merge does when unambiguous).")(f)
    f = click.option("--input-tensor", "input_names", multiple=True,
                     help="TF graphs / SavedModels: input tensor(s) (TF graphs: default, the only float "
                          "placeholder the output needs).")(f)
    f = click.option("--reference", type=click.Path(), help="Reference model for fidelity metrics (any path form).")(f)
    f = click.option("--data", required=True, help="DATA.npz (x or named inputs, optional y) or module:function.")(f)
    f = click.option("--unsafe", is_flag=True, help="Allow Keras models with Lambda layers or custom code.")(f)
    return f


_BITS = {"32": "float32", "16": "float16", "8": "int8", "4": "int4", "ecq": "ecq"}


def _parse_bits(ctx, param, text):
    if text is None:
        return None
    chosen = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in _BITS and not (part.startswith("ecq:") and part[4:].lstrip("-").isdigit()):
            raise click.BadParameter(f"{part!r}: bits are 32 (float32), 16 (float16), 8 (int8), 4 (int4), ecq "
                                     "(entropy-coded levels, QP searched) or ecq:N (at QP N)")
        chosen.append(_BITS.get(part, part))
    return tuple(dict.fromkeys(chosen)) or None


def ray_options(f):
    """Where evaluations run: --ray [ADDRESS] instead of --jobs."""
    f = click.option("--ray-workers", type=click.IntRange(min=1), help="With --ray: at most this many workers "
                     "(default: the cluster's CPUs / --ray-cpus-per-worker).")(f)
    f = click.option("--ray-cpus-per-worker", "ray_cpus", type=click.FloatRange(min=0.01), default=1.0,
                     show_default=True, help="With --ray: CPUs each worker takes (one worker per this many CPUs "
                     "of the cluster; each loads the model once).")(f)
    f = click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Evaluate on a Ray cluster: alone, a new local Ray instance; 'auto' or ray://HOST:PORT joins "
                     "a running one. Models and data reach the workers through Ray (pip install 'wcompress[ray]'). "
                     "See docs/scale.md.")(f)
    return f




def budget_options(holdout_note=""):
    """autotune and compress: the metric, the loss allowed, and which examples judge it."""
    def add(f):
        f = click.option("--time-limit", help="Stop searching after this long (e.g. 90s, 20m, 1.5h) and write the "
                         "best state found that meets the budget on the held-out examples.")(f)
        f = click.option("--best-effort", is_flag=True, help="When no state meets the budget, write the one "
                         "that came closest on the held-out examples (reported as outside the budget) instead of "
                         "nothing.")(f)
        f = click.option("--validation", type=click.Path(), help="Judge on this DATA.npz instead of a held-out "
                         "part.")(f)
        f = click.option("--holdout", type=float, default=0.3, show_default=True, help="Fraction of the examples "
                         "the search never sees; the result must meet the budget on them" + holdout_note + ".")(f)
        f = click.option("--relative/--absolute", default=True, show_default=True,
                         help="--max-drop as a fraction of the dense score, or in the metric's own units.")(f)
        f = click.option("--max-drop", type=float, required=True, help="Largest loss allowed, e.g. 0.05.")(f)
        return click.option("--metric", help="The metric to keep within budget (see evaluate; default with "
                            "unlabelled data: fidelity to MODEL itself).")(f)
    return add


def _eval_options(reference, input_names, output_name, feeds, batch_size, unsafe, custom_objects, model_code):
    """The evaluation options every scoring command takes, as the API's keyword arguments."""
    return dict(reference=reference, input_names=tuple(input_names), output_name=output_name, feeds=tuple(feeds),
                batch_size=batch_size, unsafe=unsafe, custom_objects=custom_objects, model_code=model_code)


def values_options(f):
    """How the container stores values, as variants are evaluated and packed."""
    f = click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
                     help="Calibration inputs (.npz): GPTQ rounding for --bits 8/4, and the statistics wanda and "
                          "sparsegpt score weights by (keep them apart from --data).")(f)
    f = click.option("--bits", callback=_parse_bits, help="Comma list of value widths to cross with sparsity: 32 "
                     "(float32), 16 (float16), 8 (int8 codes), 4 (int4 codes), ecq:N (entropy-coded levels at QP N; autotune "
                     "also takes plain ecq: the coarsest QP that holds, searched, then per layer); variants are "
                     "evaluated as the container restores them and packed bytes are that container's "
                     "(default: 32).")(f)
    return f


def selection_options(f):
    """Which tensors the sparsifier may touch, as sparsify takes them."""
    f = click.option("--min-size", type=int, help="Skip tensors with fewer than N weights (default: the size "
                     "floor sparsify uses; 0: none).")(f)
    f = click.option("--exclude", multiple=True, help="Never tensors or layers matching this glob (repeatable).")(f)
    f = click.option("--include", multiple=True, help="Only tensors or layers matching this glob (repeatable).")(f)
    return f






@cli.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The .tflite file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--tflite", is_flag=True, default=True, help="Write TFLite (the only export target).")
@click.option("--float", "keep_float", is_flag=True, help="Keep float32 weights (default: int8 weight storage, the "
              "converter's dynamic-range quantization).")
@click.option("--input-tensor", "input_names", multiple=True, help="TF graphs: input tensor(s) (default: the only "
              "float placeholder the output needs).")
@click.option("--output-tensor", "output_name", help="TF graphs: the output tensor (default: inferred).")
@click.option("--feed", "feeds", multiple=True, help="TF graphs: NAME=VALUE for an extra placeholder, frozen as a "
              "constant (bool ones, e.g. is_training flags, default to false).")
@click.option("--unsafe", is_flag=True, help="Allow Keras models with Lambda layers or custom code.")
@custom_objects_option
@json_option
def export(model, output, force, tflite, keep_float, input_names, output_name, feeds, unsafe, custom_objects,
           as_json):
    """Convert a model (sparsified, quantized or not) to TFLite with the converter's sparse encoding and int8
    weight storage: Keras models, SavedModels, TF1 graphs with .meta, and containers of any of them."""
    from wcompress import api

    result = api.export(model, output, force=force, int8=not keep_float, input_names=input_names,
                        output_name=output_name, feeds=feeds, unsafe=unsafe, custom_objects=custom_objects)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"{model} → {result['output']}: {result['output_bytes']:,} B")


@cli.command()
@click.argument("model", type=click.Path())
@eval_options
@click.option("--metric", "metrics", multiple=True,
              help="top1, top5, topK, gap20, auc, mse, fidelity, corr, cosine, maxdiff, a plugin's, or module:function "
                   "(repeatable; default: fidelity, cosine and maxdiff with --reference).")
@json_option
def evaluate(model, data, reference, input_names, output_name, feeds, batch_size, unsafe, custom_objects, model_code,
             metrics, as_json):
    """Run MODEL on DATA and score it: accuracy, GAP@20, AUC, MSE, or fidelity to a reference model."""
    from wcompress import api

    result = api.evaluate(model, data, metrics=metrics, progress=not as_json,
                          **_eval_options(reference, input_names, output_name, feeds, batch_size, unsafe,
                                          custom_objects, model_code))
    if as_json:
        emit_json(result.to_dict())
        return
    for r in result.results:
        click.echo(f"{r['metric']}: {r['value']:.6f}")
    click.echo(f"({result.examples:,} examples, output shape {result.output_shape})")


@cli.command()
@click.argument("model", type=click.Path())
@eval_options
@click.option("--metric", help="The metric to plot against sparsity (see evaluate; default with unlabelled data: "
              "fidelity to MODEL itself).")
@click.option("--methods", default="flat,triangular,relative", show_default=True,
              help="Comma list; wanda and sparsegpt (δ: the fraction zeroed) need --calibration.")
@click.option("--deltas", help="START:STOP:STEP or a comma list for every method, or per method "
              "'flat=0:1:0.1,triangular=0:0.02:0.002,relative=0:0.9:0.05' (triangular uses δ for both --dconv and "
              "--dfc). Default: flat=0:1:0.1, triangular=0:0.1:0.01, relative=0:0.9:0.1.")
@selection_options
@click.option("--layer", "layers", multiple=True, help="Per-layer override 'GLOB=DELTA' (repeatable).")
@click.option("--pattern", "patterns", help="Comma list of N:M patterns (e.g. 2:4,4:8): one more row each for every "
              "method that keeps N of every M inputs (relative, wanda, sparsegpt).")
@click.option("--acceptable", type=float, default=0.95, show_default=True,
              help="Acceptability line as a fraction of the dense score (0.95: at most a 5% drop).")
@click.option("--csv", "csv_path", type=click.Path(), help="Also write the table as CSV.")
@click.option("--plot", "plot_path", type=click.Path(), help="Draw metric against sparsity to a PNG.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Evaluate in this many processes.")
@ray_options
@values_options
@json_option
def sweep(model, data, reference, input_names, output_name, feeds, batch_size, unsafe, custom_objects, model_code,
          metric, methods, deltas, include, exclude, min_size, layers, patterns, acceptable, csv_path, plot_path, jobs,
          ray_address, ray_cpus, ray_workers, bits, calibration, as_json):
    """For each method and δ: sparsify, evaluate, record sparsity, metric and packed bytes (the metric
    against sparsity curve of each method, to pick the sparsity a model allows). Variants are applied to
    the model in memory, loaded once; packed bytes are those of the container without training state."""
    from wcompress import api

    result = api.sweep(model, data, metric=metric, methods=methods, deltas=deltas, include=include, exclude=exclude,
                       min_size=min_size, layers=layers, patterns=patterns or (), acceptable=acceptable, jobs=jobs,
                       values=bits or ("float32",), calibration=calibration, ray=ray_address,
                       ray_cpus_per_worker=ray_cpus, ray_workers=ray_workers, progress=not as_json,
                       **_eval_options(reference, input_names, output_name, feeds, batch_size, unsafe,
                                       custom_objects, model_code)).to_dict()
    if csv_path:
        from wcompress.workflows import write_sweep_csv

        write_sweep_csv(result, csv_path)
    if plot_path:
        from wcompress.workflows import plot_sweep

        plot_sweep(result, plot_path)
    if as_json:
        emit_json(result)
        return
    from wcompress.render import sweep_table

    sweep_table(result)


@cli.command()
@click.argument("model", type=click.Path())
@eval_options
@budget_options(holdout_note=" (0: tune and judge on the same examples)")
@click.option("--target", type=click.Choice(["sparsity", "bytes"]), default="sparsity", show_default=True,
              help="Maximise model sparsity, or minimise the packed container's bytes.")
@click.option("--methods", help="Methods for the uniform start (default: every sparsification method not "
              "scored by calibration inputs; wanda and sparsegpt join with --calibration, uniform only).")
@selection_options
@click.option("-o", "--output", "destination", required=True, type=click.Path(),
              help="Where to write the model (its suffix picks the format).")
@click.option("--pack", is_flag=True, help="Write the sparse container instead of the input's format.")
@click.option("--values", "values_dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="With --pack: store non-zero values as float16.")
@click.option("--plan", "plan_path", type=click.Path(), help="Where to write the plan (default: OUT.plan.json).")
@click.option("--max-layers", type=int, help="Tune only this many largest layers (default: every eligible "
              "layer; 0: uniform only).")
@click.option("--max-evals", type=int, default=500, show_default=True, help="Stop searching after this many "
              "evaluations.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Evaluate in this many processes.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--pattern", help="N:M (e.g. 2:4): choose which layers keep N of every M inputs (the others stay "
              "dense), with relative (default) or --methods wanda / sparsegpt.")
@ray_options
@values_options
@json_option
def autotune(model, data, reference, input_names, output_name, feeds, batch_size, unsafe, custom_objects, model_code,
             metric, max_drop, relative, holdout, validation, best_effort, time_limit, target, methods, include,
             exclude, min_size, destination, pack, values_dtype, plan_path, max_layers, max_evals, jobs, force, pattern,
             ray_address, ray_cpus, ray_workers, bits, calibration, as_json):
    """The sparsest model (or smallest container) within --max-drop, judged on examples the search never saw:
    the best uniform setting of every method, then per-layer levels from each layer's measured sensitivity.
    With --pack --target bytes --bits 16,8,4 it also chooses how values are stored: the smallest container
    within the budget, with its bytes against the dense file, float16, int8 and TFLite int8 of the same model.

    Writes the model and a plan that `wcompress sparsify MODEL --plan PLAN` reproduces bit for bit.
    """
    from wcompress import api

    result = api.autotune(model, data, max_drop, metric=metric, relative=relative, holdout=holdout,
                          validation=validation, target=target, methods=methods, include=include, exclude=exclude,
                          min_size=min_size, output=destination, pack=pack, values=bits or values_dtype,
                          plan=plan_path, max_layers=max_layers, max_evals=max_evals, jobs=jobs, force=force,
                          pattern=pattern, calibration=calibration, ray=ray_address, ray_cpus_per_worker=ray_cpus,
                          ray_workers=ray_workers, best_effort=best_effort, time_limit=time_limit,
                          progress=not as_json,
                          **_eval_options(reference, input_names, output_name, feeds, batch_size, unsafe,
                                          custom_objects, model_code)).to_dict()
    if as_json:
        emit_json(result)
        return
    from wcompress.render import autotune_report

    autotune_report(result)


@cli.command()
@click.argument("model", type=click.Path())
@eval_options
@budget_options()
@click.option("--no-holdout", is_flag=True, help="Tune and judge on the same examples (too few to split): the "
              "result is labelled unverified.")
@click.option("-o", "--output", type=click.Path(), help="The container (.h5; default: MODEL.compressed.h5 beside "
              "the input), or .keras / .weights.h5 / .hdf5 / .tflite / a folder for the best file of that format.")
@click.option("--plan", "plan_path", type=click.Path(), help="Where to write the plan (default: OUT.plan.json).")
@click.option("--max-evals", type=int, default=500, show_default=True, help="Stop searching after this many "
              "evaluations.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Evaluate in this many processes.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@ray_options
@json_option
def compress(model, data, reference, input_names, output_name, feeds, batch_size, unsafe, custom_objects, model_code,
             metric, max_drop, relative, holdout, validation, best_effort, time_limit, no_holdout, output, plan_path,
             max_evals, jobs, force, ray_address, ray_cpus, ray_workers, as_json):
    """The smallest file that keeps MODEL within --max-drop on examples the search never saw: every
    sparsification method (the calibrated ones on the tuning examples), int8 / int4 / float16 values with
    GPTQ rounding, per-layer levels and widths, in the container. Writes nothing when no state meets the
    budget (--best-effort: the closest state, reported as outside it); refuses data too small to hold a part
    out unless given --validation or --no-holdout.

    Example: wcompress compress model.keras --data photos.npz --metric top1 --max-drop 0.05 --time-limit 20m
    """
    from wcompress import api

    result = api.compress(model, data, max_drop, metric=metric, output=output, relative=relative, holdout=holdout,
                          validation=validation, no_holdout=no_holdout, time_limit=time_limit, max_evals=max_evals,
                          jobs=jobs, force=force, plan=plan_path, ray=ray_address, ray_cpus_per_worker=ray_cpus,
                          ray_workers=ray_workers, best_effort=best_effort, progress=not as_json,
                          **_eval_options(reference, input_names, output_name, feeds, batch_size, unsafe,
                                          custom_objects, model_code)).to_dict()
    if as_json:
        emit_json(result)
        return
    from wcompress.render import autotune_report

    autotune_report(result)


@cli.command("ensemble-search")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@eval_options
@click.option("--metric", required=True, help="The metric to maximise (see evaluate).")
@click.option("--budget", required=True, help="Largest merged size, e.g. 1GB.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--top", type=int, default=10, show_default=True, help="How many combinations to show.")
@click.option("--min-members", type=int, default=1, show_default=True, help="Consider only ensembles this large.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Evaluate candidates in this many processes.")
@ray_options
@json_option
def ensemble_search(models, data, reference, input_names, output_name, feeds, batch_size, unsafe, custom_objects,
                    model_code, metric, budget, dtype, top, min_members, jobs, ray_address, ray_cpus, ray_workers,
                    as_json):
    """Pick ensemble members and weights that maximise the metric under a size budget (the combinations
    tried, best first, with the `wcompress merge` command that builds the best)."""
    from wcompress import api

    result = api.ensemble_search(list(models), data, metric, budget, dtype=dtype, top=top, min_members=min_members,
                                 jobs=jobs, ray=ray_address, ray_cpus_per_worker=ray_cpus, ray_workers=ray_workers,
                                 **_eval_options(reference, input_names, output_name, feeds, batch_size, unsafe,
                                                 custom_objects, model_code)).to_dict()
    if as_json:
        emit_json(result)
        return
    from wcompress.render import ensemble_table

    ensemble_table(result)


@cli.command("plugins")
@json_option
def plugins_command(as_json):
    """List the plugins that loaded, where from, and the passes each registered."""
    from wcompress.plugins import plugin_table

    rows = plugin_table()
    if as_json:
        emit_json(rows)
        return
    from wcompress.render import plugins_table

    plugins_table(rows)


def _register_plugin_commands():
    from wcompress.plugins import load_plugins, pm

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
