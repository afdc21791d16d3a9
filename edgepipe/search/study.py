"""The study a search stage runs in: Optuna storage, a shared trial budget, resume after a kill.

The study lives in an Optuna storage: by default a SQLite file in the stage's work folder (kept while the
stage's key is unchanged, so a killed search resumes with its finished trials), or any URL Optuna takes
(`postgresql://...`, `mysql://...`) or `journal:PATH` (Optuna's journal file, for a shared file system),
which several machines can work on at once (`edgepipe worker RECIPE STAGE`).

Every process, the chief and each worker, runs the same loop: ask for a trial, run it, tell the result,
until the study holds `trials` trials that are finished (complete, pruned or failed) or running: a trial
that fails (a NaN loss, a figure that cannot be computed) spends its place, so a search whose every
trial fails stops after `trials` of them. The budget is shared: a trial asked for beyond it (two
processes asked at the same moment) is told as failed with `surplus` set and is left out of every table.
A trial abandoned through no fault of its own (its process was killed, or interrupted with Ctrl-C or
SIGTERM) is failed with `abandoned` set and its parameters are asked again, so a resumed search neither
loses nor repeats it, and it does not count. An EdgepipeError stops the search in one line and spends its
trial: it may come from the trial's own parameters, which a resume would otherwise ask again forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

from edgepipe.core import ui
from edgepipe.core.errors import EdgepipeError

SPACE_ATTR = "edgepipe_space"
RUNNER_ATTR = "runner"  # host:pid of the process that runs a trial
SURPLUS_ATTR = "surplus"
RETRY_OF_ATTR = "retry_of"
ABANDONED_ATTR = "abandoned"
HEARTBEAT_SECONDS = 30


def storage_url(storage: str | None, work: Path) -> str:
    """The storage a study lives in: `storage`, else a SQLite file in the stage's work folder."""
    return storage or f"sqlite:///{(work / 'study.db').resolve()}"


def check_url(storage: str) -> str | None:
    """None if `storage` is a storage URL edgepipe can hand to Optuna, else the problem (at load)."""
    if storage.startswith("journal:"):
        return None if storage[len("journal:") :] else "journal: needs a file path (journal:/shared/study.log)"
    scheme = storage.partition("://")[0]
    if "://" not in storage or not scheme:
        return "is not a storage URL (sqlite:///file.db, postgresql://user@host/db, journal:/path/file.log)"
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        return f"has scheme {scheme!r}; Optuna stores studies in sqlite, postgresql, mysql or a journal file"
    return None


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna marks the heartbeat API experimental on every call; the search relies on it knowingly."""
    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings(
            "ignore", message="Heartbeat of storage"
        )  # "use it with Study.optimize": see run_trials
        yield


def _storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # The heartbeat marks a trial whose process died as failed after the grace period, wherever it ran.
    with _quiet_optuna():
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=4 * HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
        )


def open_study(url: str, name: str, fingerprint: str, directions: list[str], sampler, pruner, *, create: bool = True):
    """Create or load study `name` in `url`; a study of that name made for another space is refused."""
    import optuna
    import sqlalchemy.exc

    shown = url if "@" not in url else url.split("://")[0] + "://...@" + url.rpartition("@")[2]
    try:
        storage = _storage(url)
        if create:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=directions,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        else:
            study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    except KeyError:
        raise EdgepipeError(
            f"no study '{name}' in {shown}",
            "start the search first (edgepipe run RECIPE --only STAGE), then the workers",
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError) as e:
        text = " ".join(str(e).split())[:200]
        raise EdgepipeError(
            f"cannot open the search's storage {shown}: {type(e).__name__}: {text}",
            "check the URL, that the database server is reachable and its Python driver "
            "installed (postgresql: pip install psycopg2-binary)",
        ) from None
    have = study.user_attrs.get(SPACE_ATTR)
    if have is None:
        study.set_user_attr(SPACE_ATTR, fingerprint)
    elif have != fingerprint:
        raise EdgepipeError(
            f"study '{name}' in {shown} was made for another search space or budget "
            f"({have}, this search is {fingerprint})",
            "give this search its own `study` name, or delete the old study",
        )
    if [d.name.lower() for d in study.directions] != directions:
        raise EdgepipeError(
            f"study '{name}' optimizes {len(study.directions)} objective(s), this search {len(directions)}",
            "give this search its own `study` name",
        )
    return study


def this_runner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(runner: str) -> bool | None:
    """Whether the process `host:pid` runs: True/False on this host, None (unknown) elsewhere."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphans(study) -> int:
    """Fail the running trials of this host whose process is gone (a killed search), and ask their
    parameters again. Other hosts' trials are left to the storage's heartbeat."""
    import optuna
    from optuna.trial import TrialState

    with _quiet_optuna():
        optuna.storages.fail_stale_trials(study)  # other hosts' trials whose heartbeat stopped (no-op without one)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(t.user_attrs.get(RUNNER_ATTR, "")) is False:
            with contextlib.suppress(Exception):  # another process may fail it at the same moment
                abandon(study, t._trial_id, t.number, t.params)
                n += 1
    return n


def abandon(study, trial_id: int, number: int, params: dict) -> None:
    """Fail a running trial that stopped through no fault of its own, and ask its parameters again."""
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(trial_id, ABANDONED_ATTR, True)  # while it runs: tell freezes it
    study.tell(number, state=TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={RETRY_OF_ATTR: number})


def counted(study) -> list:
    """The trials that count against the budget: finished (complete, pruned or failed) and running; not
    a surplus trial, nor an abandoned one whose parameters were asked again (the retry counts instead)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials} | {t.system_attrs.get("failed_trial") for t in trials}
    spent = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    return [
        t
        for t in trials
        if t.state in spent
        and not t.user_attrs.get(SURPLUS_ATTR)
        and not (t.state == TrialState.FAIL and (t.user_attrs.get(ABANDONED_ATTR) or t.number in retried))
    ]


@contextlib.contextmanager
def _noting_signals():
    """Note SIGINT and SIGTERM while trials run, then let the handlers in place act as before.

    A library can turn the KeyboardInterrupt a handler raises into an ordinary exception (TensorFlow does
    for one raised inside a py_function or a tf.data generator); the trial would then count as failed and
    the search go on. The note lets the loop stop anyway. Only the main thread can set handlers.
    """
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    before = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if not callable(handler):  # SIG_DFL for SIGTERM ends the process anyway; SIG_IGN: ignored as asked
            continue

        def note(n, frame, handler=handler):
            noted.append(n)
            handler(n, frame)

        before[signum] = handler
        signal.signal(signum, note)
    try:
        yield noted
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def run_trials(study, objective: Callable, budget: int, on_done: Callable[[object], None]) -> int:
    """Ask, run and tell trials until the study has `budget` counted trials; returns how many ran here.

    `objective(trial)` returns the value(s), or raises optuna.TrialPruned; any other exception fails the
    trial (its message kept as the `error` user attribute; it counts against the budget) and the search
    goes on, except an interrupt (Ctrl-C, SIGTERM), which abandons the trial (its parameters are asked again
    when the search resumes), and an EdgepipeError, which fails it; both stop the search.
    """
    with _noting_signals() as signals:
        return _run_trials(study, objective, budget, on_done, signals)


def _run_trials(study, objective: Callable, budget: int, on_done: Callable, signals: list[int]) -> int:
    import optuna
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    ran = 0
    while True:
        if signals:  # an interrupt that came between trials, or during a pruned one
            raise KeyboardInterrupt
        fail_orphans(study)
        if len(counted(study)) >= budget:
            return ran
        with _quiet_optuna():
            trial = study.ask()
        trial.set_user_attr(RUNNER_ATTR, this_runner())
        ahead = [t for t in counted(study) if t.number < trial.number]
        if len(ahead) >= budget:  # another process took the last place between the count and the ask
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            return ran
        try:
            # Study.optimize beats for its trials; an ask/tell loop has to, or a dead worker's trial on another
            # host would stay running forever instead of failing after the grace period.
            with _quiet_optuna():
                beat = get_heartbeat_thread(trial._trial_id, study._storage)  # Optuna's own helper
            with beat:
                values = objective(trial)
            if signals:
                raise KeyboardInterrupt  # the interrupt arrived, but what the trial ran swallowed it
        except (KeyboardInterrupt, SystemExit):  # not the trial's fault: its parameters are asked again on resume
            with contextlib.suppress(Exception):
                abandon(study, trial._trial_id, trial.number, trial.params)
            raise
        except EdgepipeError as e:  # the search stops in one line; the trial is spent, or a resume would repeat it
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
                study.tell(trial, state=TrialState.FAIL)
            raise
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except Exception as e:  # noqa: BLE001 - a trial that crashes (NaN, a builder's error) is one failed trial
            if signals:  # an interrupt turned into an ordinary exception on its way out of a library
                with contextlib.suppress(Exception):
                    abandon(study, trial._trial_id, trial.number, trial.params)
                raise KeyboardInterrupt from None
            trial.set_user_attr("error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values)
        ran += 1
        on_done(next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))


def wait_for_others(study, timeout: float = 24 * 3600) -> None:
    """Wait until no trial of the study is running (other workers finishing theirs)."""
    from optuna.trial import TrialState

    start, said = time.monotonic(), False
    while True:
        fail_orphans(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        if not said:
            ui.say(f"    waiting for {len(running)} trial(s) still running in other workers")
            said = True
        if time.monotonic() - start > timeout:
            raise EdgepipeError(
                f"{len(running)} trial(s) still running after {timeout / 3600:.0f} h",
                "stop the workers, or fail their trials in the study",
            )
        time.sleep(5)
