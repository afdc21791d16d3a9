"""The `edgepipe` command: options in, runner calls out. No logic lives here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edgepipe.core import ui
from edgepipe.core.errors import EdgepipeError


def _config():
    """The project config (edgepipe.toml), read once per command by `main`."""
    return click.get_current_context().find_root().obj["config"]


def _load(recipe: str, profile: str | None, sets: tuple[str, ...], target: str | None = None, host: str | None = None):
    from edgepipe.pipeline.recipe import find_recipe, load_recipe

    config = _config()
    return load_recipe(
        find_recipe(recipe),
        profile=profile,
        sets=sets,
        target=target,
        host=host,
        default_target=config.target,
        hosts=config.hosts,
    )


def _runner(r, root: Path, track: str | None = None):
    from edgepipe.pipeline.runner import Runner

    config = _config()
    return Runner(r, root, cache_size=config.cache_bytes, track=track, tracking_uri=config.tracking_store)


class _Once(click.Option):
    """An option that takes one value and refuses a second: click would silently keep the last, so
    `--profile smoke --profile quick` would run a profile nobody may have meant."""

    def __init__(self, *args, **kwargs):
        self._single_default = kwargs.pop("default", None)
        super().__init__(*args, multiple=True, **kwargs)

    def process_value(self, ctx, value):
        values = super().process_value(ctx, value)
        if len(values) > 1:
            raise click.UsageError(
                f"{max(self.opts, key=len)} given {len(values)} times ({', '.join(map(str, values))})", ctx=ctx
            )
        return values[0] if values else self._single_default

    def get_help_extra(self, ctx):  # show the single default, not the tuple multiple=True implies
        extra = super().get_help_extra(ctx)
        if self.show_default and self._single_default is not None:
            extra["default"] = str(self._single_default)
        return extra


def _option(*decls, **kwargs):
    return click.option(*decls, cls=_Once, **kwargs)


recipe_arg = click.argument("recipe")
profile_opt = _option("--profile", "-p", default=None, help="apply the recipe's named profile (e.g. smoke)")
set_opt = click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="override a param (repeatable)")
until_opt = _option("--until", default=None, metavar="STAGE", help="run this stage and what it depends on")
only_opt = _option("--only", default=None, metavar="STAGE", help="run just this stage on existing inputs")
target_opt = _option(
    "--target",
    "-t",
    default=None,
    metavar="NAME|FILE.yaml",
    help="device to bench and bundle for (`edgepipe targets` lists them)",
)
host_opt = _option("--host", default=None, metavar="USER@ADDR[:PORT]", help="SSH address of the target device")
root_opt = _option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="folder that holds runs/ and models/",
)


def _stack(*options):
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f

    return apply


# The option stacks commands share: a recipe with its overrides, and the device it is measured on.
recipe_options = _stack(recipe_arg, profile_opt, set_opt)
target_options = _stack(target_opt, host_opt)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show tracebacks and diagnostic logs")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """edgepipe: from a dataset to benchmarked LiteRT models, one recipe at a time."""
    from edgepipe.core import native
    from edgepipe.pipeline import config

    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(name)s: %(message)s")
    ctx.obj = {"debug": debug, "config": config.load()}
    ctx.with_resource(config.environment(ctx.obj["config"]))
    ctx.with_resource(native.library_noise_to_log())  # a library's warnings go to the log (--debug), not stderr


@main.command()
@recipe_options
@until_opt
@only_opt
@target_options
@root_opt
@click.option("--force", is_flag=True, help="rerun the selected stages even if up to date")
@click.option("--dry-run", is_flag=True, help="say what would run, run nothing")
@_option(
    "-j",
    "--jobs",
    default=1,
    show_default=True,
    type=int,
    help="stages run at once, in worker processes, when their inputs are ready",
)
@click.option(
    "--track",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[URI]",
    help="log the run to MLflow (at URI; default: the recipe's tracking.uri, $EDGEPIPE_TRACKING_URI, "
    "else sqlite in mlruns/)",
)
def run(recipe, profile, sets, until, only, target, host, root, force, dry_run, jobs, track):
    """Run the stale stages of RECIPE (a name in recipes/ or a path)."""
    r = _load(recipe, profile, sets, target, host)
    _summary(
        r, lambda: _runner(r, root, track).run(until=until, only=only, force=force, dry_run=dry_run, jobs=jobs), dry_run
    )


@main.command()
@recipe_options
@target_options
@root_opt
@click.option("--force", is_flag=True, help="rerun the bench stages even if up to date")
def bench(recipe, profile, sets, target, host, root, force):
    """Bench RECIPE's models on a target: its bench stages, what they need and what reads them (the report).

    e.g. --target rpi4 --host pi@addr
    """
    r = _load(recipe, profile, sets, target, host)
    runner = _runner(r, root)
    _summary(r, lambda: runner.run_kind("bench", force=force), False)


def _summary(r, go, dry_run: bool) -> None:
    import time

    start = time.perf_counter()
    results = go()
    ran = [x for x in results if x.action in ("ran", "restored")]
    restored = sum(x.action == "restored" for x in results)
    total = time.perf_counter() - start
    last = next((x.summary for x in reversed(ran) if x.summary), "")
    ui.say(
        f"{r.name}: {len(ran) - restored} ran, "
        + (f"{restored} restored from the run cache, " if restored else "")
        + f"{len(results) - len(ran)} {'checked' if dry_run else 'skipped'}"
        f"{f' in {total:.1f} s' if ran else ''}" + (f"; {last}" if last else "")
    )


@main.command()
@recipe_options
@root_opt
def report(recipe, profile, sets, root):
    """Print where RECIPE's HTML report is (open it in a browser)."""
    from edgepipe.pipeline.outputs import find_report

    ui.say(str(find_report(_load(recipe, profile, sets), root).resolve()))


@main.command()
@recipe_options
@target_options
@root_opt
def status(recipe, profile, sets, target, host, root):
    """Show each stage of RECIPE as fresh or stale, and why."""
    _runner(_load(recipe, profile, sets, target, host), root).status()


@main.command()
@recipe_arg
@root_opt
def runs(recipe, root):
    """List RECIPE's recorded runs (runs/RECIPE/history.jsonl): number, date, headline figure, what changed."""
    from edgepipe.pipeline import history

    r = _load(recipe, None, ())
    records = history.read(root / "runs" / r.name)
    for line in (
        history.listing(records) if records else [f"{r.name}: no runs recorded yet (runs/{r.name}/history.jsonl)"]
    ):
        ui.say(line)


@main.command()
@recipe_arg
@click.argument("a")
@click.argument("b")
@root_opt
def compare(recipe, a, b, root):
    """Compare two recorded runs of RECIPE (numbers from `edgepipe runs`, or last): the params that differ
    and the figures side by side."""
    from edgepipe.pipeline import history

    r = _load(recipe, None, ())
    records = history.read(root / "runs" / r.name)
    for line in history.comparison(history.pick(records, a, r.name), history.pick(records, b, r.name)):
        ui.say(line)


@main.command()
@recipe_arg
@root_opt
@_option(
    "--keep", default=1, show_default=True, type=int, help="run cache entries kept per stage, most recently used first"
)
def gc(recipe, root, keep):
    """Prune RECIPE's run cache (runs/RECIPE/.cache): keep the newest KEEP entries of each stage."""
    from edgepipe.core.fsio import human_size
    from edgepipe.pipeline.runcache import when

    gone, damaged, freed = _runner(_load(recipe, None, ()), root).gc(keep)
    for e in gone:
        ui.say(f"  removed {e.stage:<14} run of {when(e.created)}  key {e.key[:12]}")
    for path in damaged:
        ui.say(f"  removed damaged entry {path}")
    ui.say(
        f"{len(gone)} run cache entr{'y' if len(gone) == 1 else 'ies'} removed, {human_size(freed)} of cached "
        "files freed"
    )


@main.command()
@recipe_arg
@click.argument("stage")
@profile_opt
@set_opt
@root_opt
def worker(recipe, stage, profile, sets, root):
    """Be one more worker of STAGE: trials of a search, or a share of a multi-worker training (TF_CONFIG names
    this machine); keeps no output."""
    ui.say(f"worker done: {_runner(_load(recipe, profile, sets), root).run_as_worker(stage)}")


@main.command()
@click.argument("name", required=False)
def targets(name):
    """List target profiles, or show one (a name or a profile .yaml file) with every value."""
    import dataclasses

    from edgepipe.targets.profiles import BUILTIN, load_target

    if name is None:
        for n in BUILTIN:
            t = load_target(n)
            ui.say(f"  {n:<10} {t.kind:<8} reach {t.reach:<6} {t.description}")
        return
    from edgepipe.targets.backends import backend_for

    profile = load_target(name)
    backend = backend_for(profile)  # which also checks what its kind of device needs from the profile
    for key, value in dataclasses.asdict(profile).items():
        ui.say(f"  {key:<20} {value}")
    ui.say(f"  {'measured by':<20} {backend.name} ({type(backend).__module__})")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@target_opt
@click.option(
    "--int8/--no-int8",
    default=None,
    help="treat the models as full-int8 (default: the target's rule, or a model whose input is integer)",
)
def lint(models, target, int8):
    """Check .tflite MODELS for what TARGET cannot run: float ops in int8 graphs, quantize islands, missing ops."""
    from edgepipe.targets import lint as linter
    from edgepipe.targets.backends import backend_for
    from edgepipe.targets.profiles import load_target

    t = load_target(target or "host")
    runtime = backend_for(t).runtime  # what the device runs is its backend's knowledge
    count = 0
    for path in models:
        for f in linter.lint_for(path, t, runtime, int8):
            ui.say(f.line(path.name))
            count += 1
    ui.say(f"{len(models)} model(s), {count} finding(s) for target {t.name}")
    if count:
        raise SystemExit(1)


@main.command()
@recipe_options
def graph(recipe, profile, sets):
    """Print the stage graph of RECIPE: each stage, its kind and its inputs."""
    r = _load(recipe, profile, sets)
    ui.say(f"{r.name}: {r.description}".rstrip(": "))
    for name, stage in r.stages.items():
        ins = ", ".join(f"{role}<-{v if isinstance(v, str) else '+'.join(v)}" for role, v in stage.inputs.items())
        ui.say(f"  {name:<16} {stage.kind.name:<10} {ins}")


@main.command()
@click.argument("kind", required=False)
def kinds(kind):
    """List stage kinds, or the parameters of KIND with defaults and meanings."""
    from edgepipe.core.params import describe
    from edgepipe.stages.registry import kinds as table

    t = table()
    if kind is None:
        for k in t.values():
            ui.say(
                f"  {k.name:<10} {k.doc}  (inputs: {', '.join(r + ('?' if r in k.optional_inputs else '') for r in k.inputs) or 'none'})"
            )
        return
    if kind not in t:
        raise EdgepipeError(f"unknown stage kind '{kind}'", f"use one of: {', '.join(t)}", exit_code=2)
    for name, default, doc in describe(t[kind].params):
        ui.say(f"  {name:<26} {default:<14} {doc}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the runner stops its workers and leaves no half-written output."""


_TERMINATED: list[int] = []  # click turns a KeyboardInterrupt into Abort, so the signal is noted here


def _on_sigterm(signum, frame):
    _TERMINATED.append(signum)
    raise _Terminated()


def entry() -> None:
    """Console-script entry: one error line and a non-zero exit for user errors, no traceback."""
    import signal

    debug = "--debug" in sys.argv
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        main(standalone_mode=False, prog_name="edgepipe")
    except EdgepipeError as e:
        if debug:
            raise
        _fail(str(e), e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort) as e:
        click.echo("edgepipe: interrupted; rerun the same command to resume", err=True)
        sys.exit(143 if _TERMINATED or isinstance(e, _Terminated) else 130)
    except click.UsageError as e:  # click's own: a bad option value, a missing argument, a typo
        command = e.ctx.command_path if e.ctx else "edgepipe"
        _fail(f"{e.format_message()}; fix: see `{command} --help`", 2)
    except click.ClickException as e:
        _fail(f"{e.format_message()}; fix: see `edgepipe --help`", e.exit_code)
    except OSError as e:  # the disk, permissions: what the machine refused, with the path
        if debug:
            raise
        _fail(str(EdgepipeError.from_os_error(e)), 1)
    except Exception as e:  # a bug in edgepipe, not in the user's input
        if debug:
            raise
        _fail(
            f"internal error: {type(e).__name__}: {e}; fix: rerun with --debug for the traceback and report it",
            1,
            prefix="edgepipe: ",
        )


def _fail(line: str, code: int, prefix: str = "edgepipe: error: ") -> None:
    click.echo(prefix + " ".join(line.split()), err=True)  # one line, whatever the message held
    sys.exit(code)
