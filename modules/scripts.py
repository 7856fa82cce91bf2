"""The scripts of the page's Script dropdown and of the API's ``script_name``: A1111's X/Y/Z plot and Prompts from
file or textbox. Each is a module with a title, settings read from A1111's positional ``script_args``, a ``plan``
that makes and checks every job before anything runs, and a ``run`` for the job queue's worker."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modules import processing, prompts_from_file, xyz_grid
from modules.processing_params import GenerationParams, ParamsError
from modules.state import AppState


@dataclass(frozen=True)
class Script:
    title: str
    settings: Callable[[Sequence[object]], object]  # A1111's script_args → the script's settings
    plan: Callable[[AppState, GenerationParams, object], object]  # every job made and checked (raises ValueError)
    run: Callable[[AppState, object], processing.Processed]  # the plan, on the queue's worker
    args_info: Callable[[str], list[dict[str, object]]]  # /script-info's args for a tab, in script_args order


SCRIPTS: tuple[Script, ...] = (
    Script(xyz_grid.TITLE, xyz_grid.XyzSettings.from_script_args, xyz_grid.plan, xyz_grid.run,  # type: ignore[arg-type]
           xyz_grid.script_args_info),
    Script(prompts_from_file.TITLE, prompts_from_file.PromptsSettings.from_script_args, prompts_from_file.plan,
           prompts_from_file.run, prompts_from_file.script_args_info),  # type: ignore[arg-type]
)


def find(name: str) -> Script:
    """The script titled ``name`` (A1111 matches titles without case).

    Raises:
        ParamsError: no such script here, listing those there are.
    """
    for script in SCRIPTS:
        if script.title.lower() == name.strip().lower():
            return script
    raise ParamsError(f"script {name!r} is not available here; the scripts are: "
                      f"{', '.join(s.title.lower() for s in SCRIPTS)}")


def jobs_of(plan: object) -> list[GenerationParams]:
    """Every job a script's plan will run (to check the names they carry)."""
    return plan.all_jobs()  # type: ignore[attr-defined]
