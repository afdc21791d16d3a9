"""What a stage needs from the machine, checked by the runner before any stage of a run starts.

A stage kind declares `needs(params) -> [Requirement, ...]`; the runner asks every stage that will run and
refuses the whole run in one line if anything is missing, so a missing emulator is said in seconds, not
after twenty minutes of training. The runner does not know what any kind needs.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

from edgepipe.core import system


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One thing a stage needs.

    Attributes:
        what: what is needed, as the error names it ("arm-none-eabi-gcc and qemu-system-arm").
        unmet: returns None when the need is met, else what is wrong ("not installed"); it may take a few
            seconds (an SSH host that must answer), never minutes.
        fix: how to meet it, for the error's `fix:`.
    """

    what: str
    unmet: Callable[[], str | None]
    fix: str


def tools(names: list[str], purpose: str) -> Requirement:
    """Commands on PATH (or absolute files) from the Debian packages of `edgepipe.core.system`."""

    def unmet() -> str | None:
        gone = [n for n in names if not (Path(n).exists() if Path(n).is_absolute() else shutil.which(n))]
        if not gone:
            return None
        return f"{', '.join(Path(n).name for n in gone)} {'is' if len(gone) == 1 else 'are'} not installed"

    packages = system.providing(names)
    fix = system.fix_for(packages) if packages else f"install {', '.join(names)}"
    return Requirement(f"{purpose}", unmet, fix)
