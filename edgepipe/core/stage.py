"""The stage contract: what a stage function receives, and the facts the runner needs about a kind.

A stage kind is a plain function `run(params, io) -> summary` plus the facts the runner needs about it:
its parameter dataclass, the input roles it takes, and optional external dependencies (files it reads
that are not another stage's output). The code version in its cache key is derived from the imports of
the module that defines `run` (see `edgepipe.pipeline.code`), never declared by hand. The runner asks a
kind what it needs (`needs`, `joinable`, `findings`, `resets_keras`, `reads_upstream`) and never probes a
stage's parameters by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Literal

from edgepipe.core.requirements import Requirement


@dataclasses.dataclass(frozen=True)
class StageIO:
    """What the runner hands a stage function.

    Attributes:
        inputs: role -> the output directory of the upstream stage (a list for roles that take many).
        out: a fresh, empty directory; renamed into place only if the stage returns normally.
        work: scratch space that survives a crash (checkpoints), kept while the cache key is the same
            and removed after success, so a killed run resumes from it.
        logs: a folder outside the output for logs that must not enter the output's digest (TensorBoard:
            its event files hold wall times, so they would differ on every run and rerun everything
            downstream); None: write no such logs.
        upstream: stage name -> the output directory of every stage the inputs were made from, for a kind
            that `reads_upstream` (empty for the others).
    """

    inputs: dict[str, Any]
    out: Path
    work: Path
    logs: Path | None = None
    upstream: dict[str, Path] = dataclasses.field(default_factory=dict)


FINDINGS = "diagnostics.json"  # in a stage's output: what the doctor or the lint found, one entry per finding


def findings_in(out: Path) -> list[str]:
    """The lines of the findings a stage wrote to its output's `FINDINGS` file, each as `source: line`."""
    path = out / FINDINGS
    return [f"{f.get('source', 'doctor')}: {f['line']}" for f in json.loads(path.read_text())] if path.is_file() else []


@dataclasses.dataclass(frozen=True)
class StageKind:
    """Static facts about one kind of stage.

    Attributes:
        name: the recipe's `kind:` value.
        params: dataclass of the stage's parameters (see `edgepipe.core.params`).
        run: the stage function, `run(params, io) -> str | None` (a one-line summary). Its module, and
            every edgepipe module that module imports, make the stage's code version.
        inputs: role -> True if the role takes a list of stages, False for exactly one.
        accepts: role -> the outputs (see `output`) a stage given for that role must produce; a recipe
            wiring, say, a data stage to a convert stage's `model` is refused at load.
        output: what the stage produces: dataset, model (a Keras model.h5), tflite (converted models with
            sidecars), bench (bench.json), bundle or report.
        output_for: params -> what a stage of this kind with these params produces, for a kind whose
            output depends on them (an import stage: a Keras model, or a .tflite); its possible outputs
            are `output` and `also_outputs`. None: always `output`.
        also_outputs: what else the kind may produce (with `output_for`).
        optional_inputs: roles of `inputs` a recipe may leave out.
        exclusive: runs alone in a parallel run (`--jobs`), because it measures time.
        light: runs in the runner's own process even in a parallel run: quick, no TensorFlow, and what
            it prints is for the user (the report's table).
        main_output: the file named in the stage's closing line.
        deps: params -> files outside `runs/` the stage reads (hashed into the key): a dataset, the
            module of a user's model builder.
        environment: params -> facts about the machine the stage measures (CPU, runtime versions),
            part of the key, so a benchmark reruns on another machine instead of reporting stale figures.
        join: `join(params, io) -> str`, what one more process working on a running stage of this kind runs
            (`edgepipe worker`: a search's trials, a multi-worker training's share); its output is thrown away.
        joinable: params -> where a worker of such a stage works, or None if the stage takes no workers:
            "chief" in the chief's work folder on this machine (where the stage's state is: a search's
            study), "own" in a scratch folder of its own (the state is shared otherwise: a storage URL, the
            cluster TF_CONFIG names). None (the default): the kind takes no workers.
        needs: params -> what the stage needs from this machine (`edgepipe.core.requirements`): tools, a
            device that answers, an optional package. The runner checks them for every stage that will run
            before the first one starts.
        findings: output directory -> lines the runner prints under the stage's closing line (the doctor's
            and the lint's findings); by default those in its `FINDINGS` file.
        resets_keras: the runner clears Keras' global state before the stage, since Keras numbers
            auto-named layers per process and the names are saved in model.h5 (without it, a stage's bytes
            would depend on what ran before it in the same process). False for a kind that builds no Keras
            model, so that it leaves the caller's session alone where it runs in the caller's process.
        output_task: params -> the task (`edgepipe.tasks`) of the dataset a stage of this kind outputs: what
            its labels mean. None: not a dataset maker.
        check_task: `(params, task)` raises EdgepipeError when a stage of this kind with these params cannot
            work on its `data` input's task (a classifier's loss, a device that scores class scores only);
            the recipe is refused at load, before anything trains. None: any task.
        reads_upstream: the stage also reads the outputs its inputs were made from (the report shows the
            training curves and the dataset images behind the models its benches measured): the runner
            hands them in `StageIO.upstream` and puts their digests in the stage's key.
    """

    name: str
    params: type
    run: Callable[[Any, StageIO], str | None]
    inputs: dict[str, bool]
    main_output: str
    output: str
    accepts: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    deps: Callable[[Any], list[Path]] | None = None
    optional_inputs: tuple[str, ...] = ()
    exclusive: bool = False
    light: bool = False
    environment: Callable[[Any], dict] | None = None
    join: Callable[[Any, StageIO], str | None] | None = None
    joinable: Callable[[Any], Literal["chief", "own"] | None] | None = None
    needs: Callable[[Any], list[Requirement]] | None = None
    findings: Callable[[Path], list[str]] = findings_in
    resets_keras: bool = True
    reads_upstream: bool = False
    output_task: Callable[[Any], str] | None = None
    check_task: Callable[[Any, str], None] | None = None
    output_for: Callable[[Any], str] | None = None
    also_outputs: tuple[str, ...] = ()
    doc: str = ""

    def produces(self, params: Any) -> str:
        """What a stage of this kind with `params` outputs."""
        return self.output_for(params) if self.output_for else self.output

    @property
    def module(self) -> str:
        """The module that implements the stage (its code version starts here)."""
        return self.run.__module__
