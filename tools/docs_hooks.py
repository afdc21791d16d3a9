"""MkDocs hooks (mkdocs.yml `hooks:`): the references generated from the code when the site is built.

A page holding `<!-- generated: cli -->` gets the command-line reference, walked from the click command
tree in `edgepipe/cli.py`; one holding `<!-- generated: stages -->` gets a table per stage kind, from the
table of kinds (`edgepipe.stages.registry.kinds`) and each kind's parameter dataclass (the `param()`
fields: default, meaning, range). Nothing is copied by hand, so the pages cannot drift from the code; a
marker that no page holds fails the build.

Importing edgepipe sets TF_USE_LEGACY_KERAS and imports no TensorFlow (stage modules import it lazily), so
the build stays quick. The edgepipe documented is the one beside mkdocs.yml, whatever else is installed.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from pathlib import Path

from mkdocs.exceptions import PluginError

CLI_MARKER = "<!-- generated: cli -->"
STAGES_MARKER = "<!-- generated: stages -->"
_seen: set[str] = set()


def on_config(config):
    """Import edgepipe from the checkout that holds mkdocs.yml, and refuse to document another copy."""
    root = Path(config.config_file_path).parent
    sys.path.insert(0, str(root))
    import edgepipe

    found = Path(edgepipe.__file__).resolve().parent
    if found != (root / "edgepipe").resolve():
        raise PluginError(
            f"docs hooks: edgepipe imported from {found}, not {root / 'edgepipe'}; build from a "
            "fresh process (python -m mkdocs build)"
        )
    _seen.clear()
    return config


def on_page_markdown(markdown, page, config, files):
    for marker, make in ((CLI_MARKER, cli_reference), (STAGES_MARKER, stages_reference)):
        if marker in markdown:
            markdown = markdown.replace(marker, make())
            _seen.add(marker)
    return markdown


def on_post_build(config):
    missing = [m for m in (CLI_MARKER, STAGES_MARKER) if m not in _seen]
    if missing:
        raise PluginError(
            f"docs hooks: no page holds {', '.join(missing)}; the generated reference would be "
            "missing (docs/reference/cli.md and stages.md each hold one)"
        )


# --- the command line -------------------------------------------------------------------------------------


def cli_reference() -> str:
    """One section per command of the `edgepipe` click group: usage, help and options, as --help has them."""
    import click

    from edgepipe.cli import main

    root = click.Context(main, info_name="edgepipe")
    parts = [_command(main, root, heading="`edgepipe`")]
    for name, command in main.commands.items():
        if command.hidden:
            continue
        parts.append(
            _command(command, click.Context(command, info_name=name, parent=root), heading=f"`edgepipe {name}`")
        )
    return "\n\n".join(parts) + "\n"


def _command(command, ctx, heading: str) -> str:
    import click

    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    text = inspect.cleandoc(command.help or "").split("\f")[0].replace("\b\n", "")
    lines = [f"## {heading}", "", "```", usage, "```", "", _text(text), ""]
    arguments = [p for p in command.get_params(ctx) if isinstance(p, click.Argument)]
    options = [(p, p.get_help_record(ctx)) for p in command.get_params(ctx) if isinstance(p, click.Option)]
    if arguments:
        lines.append("Arguments: " + ", ".join(f"`{p.make_metavar(ctx)}`" for p in arguments) + ".")
        lines.append("")
    rows = [(names, help_text) for _, record in options if record for names, help_text in [record]]
    if rows:
        lines += ["| option | meaning |", "|---|---|"]
        lines += [f"| {_code(names)} | {_cell(help_text)} |" for names, help_text in rows]
    return "\n".join(lines).rstrip()


# --- the stage kinds --------------------------------------------------------------------------------------


def stages_reference() -> str:
    """One section per stage kind: its meaning, inputs, output and a table of its parameters."""
    from edgepipe.stages.registry import kinds

    parts = []
    for name, kind in kinds().items():
        inputs = (
            ", ".join(
                f"`{role}`"
                + (" (a list)" if many else "")
                + (" (optional)" if role in kind.optional_inputs else "")
                + (f": {' or '.join(kind.accepts[role])}" if role in kind.accepts else "")
                for role, many in kind.inputs.items()
            )
            or "none"
        )
        outputs = " or ".join(dict.fromkeys((kind.output, *kind.also_outputs)))
        lines = [
            f"## `{name}`",
            "",
            (kind.doc[:1].upper() + kind.doc[1:] + ".") if kind.doc else "",
            "",
            f"- inputs: {inputs}",
            f"- produces: {outputs}",
            f"- closing line names: `{kind.main_output}`",
            "",
            "| parameter | type | default | range | meaning |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {_code(p)} | {_code(t)} | {_code(d)} | {r} | {_cell(m)} |" for p, t, d, r, m in param_rows(kind.params)
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def param_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(dotted name, type, default, range, meaning) of every parameter of `cls`: nested groups expanded as
    `edgepipe kinds` expands them (`schedule.kind`), and the fields of a list's items as `gates[].model`."""
    from edgepipe.core.params import to_dict

    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += param_rows(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        bounds = (
            "" if lo is None and hi is None else f"{'' if lo is None else lo} .. {'' if hi is None else hi}".strip()
        )
        rows.append((prefix + f.name, type_text(tp), repr(to_dict(default)), bounds, f.metadata.get("doc", "")))
        (item,) = typing.get_args(tp) if typing.get_origin(tp) is list else (None,)
        if item is not None and dataclasses.is_dataclass(item):
            rows += param_rows(item, f"{prefix}{f.name}[].")
    return rows


def type_text(tp) -> str:
    """A parameter's type as a recipe writer reads it: `int`, `float | None`, `'int8' | 'uint8'`, `list[str]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def _code(text: str) -> str:
    return f"`{text}`"  # a pipe inside a code span does not split a table cell (Python-Markdown's tables)


def _cell(text: str) -> str:
    """A help text as one table cell."""
    return _text(" ".join(text.split()))


def _text(text: str) -> str:
    """Help text as Markdown that renders as written: `runs/<recipe>/` is text, not an HTML tag, `a*b*c` no
    emphasis, a pipe no table column; what stands between a pair of backticks stays code."""
    parts = text.split("`")
    paired = len(parts) % 2 == 1
    for i, part in enumerate(parts):
        if i % 2 == 0 or not paired:
            parts[i] = (
                part.replace("&", "&amp;")
                .replace("<", "&lt;")
                .replace(">", "&gt;")
                .replace("*", "\\*")
                .replace("_", "\\_")
                .replace("|", "\\|")
            )
    return "`".join(parts)
