"""A1111's "Prompts from file or textbox" script: one job per line of a list, each line a prompt or A1111's
command-line style settings (``--prompt "a cat" --negative_prompt "dog" --steps 30 --seed 5``).

Every line is read and every job checked before the first runs, so a typo in line 40 is an error naming line 40,
not a failure an hour in (A1111 would take a line it cannot parse as a prompt). A line's prompt goes before the
page's prompt ("Insert prompts at the: start") or after it ("end"), as its negative prompt does with the page's;
"Iterate seed every line" moves the seed on by each job's image count, "Use same random seed for all lines" fixes a
random seed once for all of them. The result is every job's images and infotexts, in order (a job's own grid,
which A1111 adds, is left out: the pictures are all there).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modules import processing, rng, styles
from modules.processing_params import GenerationParams, ParamsError
from modules.state import AppState

logger = logging.getLogger(__name__)

TITLE = "Prompts from file or textbox"
POSITIONS = ("start", "end")


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


#: A1111's tags: ``--name value`` → (our field, conversion). ``None`` as a field: accepted and ignored (a comment
#: says so); "sd_model" and "styles" are handled apart.
TAGS: dict[str, tuple[str | None, Callable[[str], object]]] = {
    "sd_model": ("sd_model", str), "outpath_samples": (None, str), "outpath_grids": (None, str),
    "prompt_for_display": (None, str), "prompt": ("prompt", str), "negative_prompt": ("negative_prompt", str),
    "styles": ("styles", str), "seed": ("seed", int), "subseed_strength": ("subseed_strength", float),
    "subseed": ("subseed", int), "seed_resize_from_h": ("seed_resize_from_h", int),
    "seed_resize_from_w": ("seed_resize_from_w", int), "sampler_index": (None, int),  # A1111 ignores it too
    "sampler_name": ("sampler_name", str), "scheduler": ("scheduler", str), "batch_size": ("batch_size", int),
    "n_iter": ("n_iter", int), "steps": ("steps", int), "cfg_scale": ("cfg_scale", float), "width": ("width", int),
    "height": ("height", int), "restore_faces": (None, _flag), "tiling": (None, _flag),
    "do_not_save_samples": ("do_not_save_samples", _flag), "do_not_save_grid": (None, _flag),
}


class PromptsError(ValueError):
    """A line of the list cannot be used; the message names the line and what is wrong."""


@dataclass(frozen=True)
class PromptsSettings:
    """The script's controls, in A1111 1.10's ``script_args`` order."""

    iterate_seed: bool = False  # "Iterate seed every line"
    same_random_seed: bool = False  # "Use same random seed for all lines"
    position: str = "start"  # "Insert prompts at the"
    text: str = ""  # "List of prompt inputs"

    @classmethod
    def from_script_args(cls, args: Sequence[object]) -> PromptsSettings:
        if len(args) > 4:
            raise PromptsError(f"{TITLE} takes at most 4 script_args; got {len(args)}")
        given = dict(zip(("iterate", "same", "position", "text"), args))
        position = str(given.get("position") or "start")
        if position not in POSITIONS:
            raise PromptsError(f"the prompt position must be start or end; got {position!r}")
        return cls(bool(given.get("iterate", False)), bool(given.get("same", False)), position,
                   str(given.get("text") or ""))


def script_args_info(mode: str) -> list[dict[str, object]]:
    """``/sdapi/v1/script-info``'s ``args`` (A1111's shape), in ``script_args`` order."""
    args = [("Iterate seed every line", False, None), ("Use same random seed for all lines", False, None),
            ("Insert prompts at the", "start", list(POSITIONS)), ("List of prompt inputs", "", None)]
    return [{"label": label, "value": value, "minimum": None, "maximum": None, "step": None, "choices": choices}
            for label, value, choices in args]


def parse_line(line: str, number: int) -> dict[str, object]:
    """One line: ``{"prompt": line}``, or the ``--tag value`` pairs of a line that has ``--``.

    Raises:
        PromptsError: an unknown tag, a tag without its value, or a value of the wrong kind, naming the line.
    """
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise PromptsError(f"line {number}: {e} (check the quotes)") from None
    values: dict[str, object] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise PromptsError(f"line {number}: {word!r} is not a --option; quote values that have spaces")
        tag = word[2:]
        if tag not in TAGS:
            raise PromptsError(f"line {number}: unknown option --{tag}; the options are "
                               f"{', '.join('--' + t for t in TAGS)}")
        if position + 1 >= len(words):
            raise PromptsError(f"line {number}: --{tag} has no value")
        try:
            values[tag] = TAGS[tag][1](words[position + 1])
        except ValueError as e:
            raise PromptsError(f"line {number}: --{tag}: {e}") from None
        position += 2
    return values


@dataclass(frozen=True)
class Plan:
    """Every line's job, checked, and what each line asked that is not done here (for the comments)."""

    jobs: list[GenerationParams]
    ignored: list[str]

    def all_jobs(self) -> list[GenerationParams]:
        return list(self.jobs)


def plan(state: AppState, params: GenerationParams, settings: PromptsSettings) -> Plan:
    """Read the list and make every line's job (validated).

    Raises:
        PromptsError: an empty list, a line that cannot be read, or a job that is not valid, naming the line.
    """
    lines = [(n, text.strip()) for n, text in enumerate(settings.text.splitlines(), start=1) if text.strip()]
    if not lines:
        raise PromptsError("the list of prompt inputs is empty: write one prompt (or --prompt ... line) per line")
    if (settings.iterate_seed or settings.same_random_seed) and params.seed == -1:
        params = dataclasses.replace(params, seed=rng.fix_seed(-1))
    jobs, ignored = [], []
    base = params
    for number, line in lines:
        values = parse_line(line, number)
        job = _job(state, base, values, settings.position, number, ignored)
        jobs.append(job)
        if settings.iterate_seed:
            base = dataclasses.replace(base, seed=base.seed + base.batch_size * base.n_iter)
    return Plan(jobs, ignored)


def _job(state: AppState, base: GenerationParams, values: dict[str, object], position: str, number: int,
         ignored: list[str]) -> GenerationParams:
    """The page's job with the line's values set (A1111's order: the values, then the prompts joined)."""
    changes: dict[str, object] = {}
    overrides = dict(base.override_settings)
    for tag, value in values.items():
        field = TAGS[tag][0]
        if field is None:
            ignored.append(f"line {number}: --{tag} is not used here; ignored (use --sampler_name for the sampler)"
                           if tag == "sampler_index" else f"line {number}: --{tag} is not supported here; ignored")
        elif field == "sd_model":
            try:
                overrides["sd_model_checkpoint"] = state.models.find(str(value)).title
            except LookupError as e:
                raise PromptsError(f"line {number}: --sd_model: {e}") from None
        elif field == "do_not_save_samples":
            changes["save_images"] = base.save_images and not value
        elif field != "styles":
            changes[field] = value
    job = dataclasses.replace(base, **changes, override_settings=overrides)
    for key, page_text in (("prompt", base.prompt), ("negative_prompt", base.negative_prompt)):
        text = values.get(key)
        if text and page_text:
            joined = f"{text} {page_text}" if position == "start" else f"{page_text} {text}"
            job = dataclasses.replace(job, **{key: joined})
    if values.get("styles"):
        names = [n.strip() for n in str(values["styles"]).split(",") if n.strip()]
        try:
            prompt, negative = styles.for_state(state).apply(job.prompt, job.negative_prompt, names)
        except LookupError as e:
            raise PromptsError(f"line {number}: --styles: {e}") from None
        job = dataclasses.replace(job, prompt=prompt, negative_prompt=negative)
    try:
        state.opts.snapshot(job.override_settings)
        return job.validate()
    except (ParamsError, KeyError, ValueError) as e:
        raise PromptsError(f"line {number}: {e}") from None


def run(state: AppState, jobs: Plan) -> processing.Processed:
    """Run the jobs in order (on the queue's worker) as one: an interrupt stops the list; returns every image."""
    results: list[processing.Processed] = []
    logger.info("Will process %d lines in %d jobs.", len(jobs.jobs), sum(j.n_iter for j in jobs.jobs))
    with state.job.outer_run(jobs.jobs[0].mode, sum(j.job_count for j in jobs.jobs)):
        for job in jobs.jobs:
            if state.job.interrupted:
                break
            results.append(processing.process(state, job))
    results = [r for r in results if r.images]  # none when the interrupt came just as a job began
    if not results:
        raise RuntimeError(f"{TITLE}: interrupted before the first line")
    first = results[0]
    comments = list(dict.fromkeys([*jobs.ignored, *(c for r in results for c in r.comments)]))
    return dataclasses.replace(  # each job's pictures (not its own grid: the list is the result)
        first, images=[i for r in results for i in r.images[r.index_of_first_image:]],
        infotexts=[t for r in results for t in r.infotexts[r.index_of_first_image:]],
        all_prompts=[p for r in results for p in r.all_prompts],
        all_negative_prompts=[p for r in results for p in r.all_negative_prompts],
        all_seeds=[s for r in results for s in r.all_seeds], all_subseeds=[s for r in results for s in r.all_subseeds],
        index_of_first_image=0, comments=comments, saved_paths=[p for r in results for p in r.saved_paths])
