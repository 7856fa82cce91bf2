"""A1111's X/Y/Z plot script: one job per cell of a grid whose axes vary the job's settings, put together as one
labelled picture (the usual way to compare LoRA weights, samplers, CFG scales or checkpoints side by side).

:func:`plan` reads the script's settings and makes every cell's job, checking them all, so a bad value is refused
before anything runs. :func:`run` (on the job queue's worker) runs the cells, slowest-to-change axis outermost (a
checkpoint is loaded once per value, not once per cell), then draws the grids: one per Z value, each X across and
Y down, side by side under their Z labels. The grid's infotext is its first cell's with ``Script``, ``X Type``,
``X Values`` (and Y, Z) added, so PNG Info gives the whole plot back.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from modules import grid_legend, images, infotext, processing, rng, xyz_axes
from modules.processing_params import GenerationParams
from modules.state import AppState
from modules.xyz_axes import Axis, AxisError

logger = logging.getLogger(__name__)

TITLE = "X/Y/Z plot"
MAX_GRID_MEGAPIXELS = 200  # A1111's img_max_size_mp default
SEED_AXES = ("Seed", "Var. seed")


@dataclass(frozen=True)
class AxisSetting:
    """One axis as the page or ``script_args`` give it: its type (A1111 index or label), the values' text and the
    dropdown's list (used for choice axes unless ``csv_mode``)."""

    type: object = "Nothing"
    values: str = ""
    dropdown: tuple[str, ...] = ()


@dataclass(frozen=True)
class XyzSettings:
    """The script's controls, in A1111 1.10's ``script_args`` order after the three axes."""

    x: AxisSetting = AxisSetting("Seed")
    y: AxisSetting = AxisSetting()
    z: AxisSetting = AxisSetting()
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False  # "Keep -1 for seeds"
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)  # X, Y, Z
    margin_size: int = 0
    csv_mode: bool = False  # "Use text inputs instead of dropdowns"

    @classmethod
    def from_script_args(cls, args: Sequence[object]) -> XyzSettings:
        """A1111 1.10's positional ``script_args`` (x_type, x_values, x_values_dropdown, y..., z..., draw_legend,
        include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x/y/z, margin_size, csv_mode); a shorter
        list keeps the defaults for the rest, as A1111's does."""
        names = ("x_type", "x_values", "x_dropdown", "y_type", "y_values", "y_dropdown", "z_type", "z_values",
                 "z_dropdown", "draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds",
                 "vary_x", "vary_y", "vary_z", "margin_size", "csv_mode")
        if len(args) > len(names):
            raise AxisError(f"X/Y/Z plot takes at most {len(names)} script_args; got {len(args)}")
        given = dict(zip(names, args))
        default = cls()

        def axis(letter: str, fallback: AxisSetting) -> AxisSetting:
            listed = given.get(f"{letter}_dropdown") or ()
            if isinstance(listed, str) or not isinstance(listed, Sequence):
                raise AxisError(f"{letter}_values_dropdown must be a list of values; got {listed!r}")
            return AxisSetting(given.get(f"{letter}_type", fallback.type), str(given.get(f"{letter}_values") or ""),
                               tuple(str(v) for v in listed))

        margin = given.get("margin_size", 0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 500:
            raise AxisError(f"margin_size must be from 0 to 500 pixels; got {margin!r}")
        return cls(axis("x", default.x), axis("y", default.y), axis("z", default.z),
                   bool(given.get("draw_legend", True)), bool(given.get("include_lone_images", False)),
                   bool(given.get("include_sub_grids", False)), bool(given.get("no_fixed_seeds", False)),
                   (bool(given.get("vary_x")), bool(given.get("vary_y")), bool(given.get("vary_z"))), int(margin),
                   bool(given.get("csv_mode", False)))


@dataclass(frozen=True)
class ResolvedAxis:
    axis: Axis
    values: list[object]
    text: str  # the values as written in the infotext

    def infotext_fields(self, letter: str, fixed_seeds: bool) -> dict[str, object]:
        if self.axis.label == "Nothing":
            return {}
        fields: dict[str, object] = {f"{letter} Type": self.axis.label, f"{letter} Values": self.text}
        if self.axis.label in SEED_AXES and fixed_seeds:
            fields[f"Fixed {letter} Values"] = ", ".join(str(v) for v in self.values)
        return fields


@dataclass(frozen=True)
class Plan:
    """Every cell's job, checked, indexed ``[iz][iy][ix]``, and how to draw and label the result."""

    base: GenerationParams
    settings: XyzSettings
    axes: tuple[ResolvedAxis, ResolvedAxis, ResolvedAxis]  # X, Y, Z
    cells: list[list[list[GenerationParams]]] = field(repr=False)

    def all_jobs(self) -> list[GenerationParams]:
        return [cell for plane in self.cells for row in plane for cell in row]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(len(xs), len(ys), len(zs))``."""
        return len(self.axes[0].values), len(self.axes[1].values), len(self.axes[2].values)

    def order(self) -> list[tuple[int, int, int]]:
        """The cells' ``(ix, iy, iz)`` in running order: A1111's rule puts the costliest axis outermost (when one
        costs strictly more than the others), then the costlier of the other two; Z, Y, X otherwise."""
        costs = [a.axis.cost for a in self.axes]
        outer, middle = 2, 1
        for i in range(3):
            others = [j for j in range(3) if j != i]
            if all(costs[i] > costs[j] for j in others):
                a, b = others
                outer, middle = i, (a if costs[a] > costs[b] else b)
                break
        inner = 3 - outer - middle
        sizes = self.shape
        cells = []
        for o, m, n in itertools.product(range(sizes[outer]), range(sizes[middle]), range(sizes[inner])):
            index = [0, 0, 0]
            index[outer], index[middle], index[inner] = o, m, n
            cells.append((index[0], index[1], index[2]))
        return cells


def script_args_info(mode: str) -> list[dict[str, object]]:
    """``/sdapi/v1/script-info``'s ``args`` for the script on one tab, in ``script_args`` order (A1111's shape).
    The axis types' choices are A1111's list for the tab, so an index into them is what ``script_args`` take."""
    labels = [label for label, only in xyz_axes.A1111_AXES if only in (None, mode)]
    args: list[dict[str, object]] = []
    for letter, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing")):
        args += [{"label": f"{letter} type", "value": default, "choices": labels},
                 {"label": f"{letter} values", "value": ""}, {"label": f"{letter} values", "value": []}]
    args += [{"label": label, "value": value} for label, value in (
        ("Draw legend", True), ("Include Sub Images", False), ("Include Sub Grids", False),
        ("Keep -1 for seeds", False), ("Vary seeds for X", False), ("Vary seeds for Y", False),
        ("Vary seeds for Z", False))]
    args.append({"label": "Grid margins (px)", "value": 0, "minimum": 0, "maximum": 500, "step": 2})
    args.append({"label": "Use text inputs instead of dropdowns", "value": False})
    return [{"label": a["label"], "value": a["value"], "minimum": a.get("minimum"), "maximum": a.get("maximum"),
             "step": a.get("step"), "choices": a.get("choices")} for a in args]


def plan(state: AppState, params: GenerationParams, settings: XyzSettings) -> Plan:
    """Resolve the axes and make every cell's job, checked; fixes the seeds (A1111) unless "Keep -1 for seeds".

    Raises:
        AxisError: an unknown or unsupported axis, a bad value, a cell whose job is invalid, a grid too large.
    """
    mode = params.mode
    if not settings.no_fixed_seeds:
        params = dataclasses.replace(params, seed=rng.fix_seed(params.seed), subseed=rng.fix_seed(params.subseed))
    if not state.opts["return_grid"]:
        params = dataclasses.replace(params, batch_size=1)  # A1111: a cell shows one picture then
    resolved = tuple(_resolve(setting, mode, settings) for setting in (settings.x, settings.y, settings.z))
    xs, ys, zs = (r.values for r in resolved)
    megapixels = round(len(xs) * len(ys) * len(zs) * params.width * params.height / 1_000_000)
    if megapixels >= MAX_GRID_MEGAPIXELS:
        raise AxisError(f"the grid would be too large ({megapixels} megapixels; at most {MAX_GRID_MEGAPIXELS}): "
                        "use fewer values or a smaller size")
    cells = [[[_cell(state, params, resolved, (ix, iy, iz), settings) for ix in range(len(xs))]
              for iy in range(len(ys))] for iz in range(len(zs))]
    return Plan(params, settings, resolved, cells)  # type: ignore[arg-type]


def _resolve(setting: AxisSetting, mode: str, settings: XyzSettings) -> ResolvedAxis:
    axis = xyz_axes.find_axis(setting.type, mode)
    listed = setting.dropdown if axis.choices is not None and not settings.csv_mode else ()
    values = xyz_axes.parse_values(axis, setting.values, listed)
    if axis.label in SEED_AXES and not settings.no_fixed_seeds:
        values = [rng.fix_seed(v) for v in values]
    text = xyz_axes.to_csv(listed) if listed else setting.values
    return ResolvedAxis(axis, values, text)


def _cell(state: AppState, params: GenerationParams, axes: Sequence[ResolvedAxis], index: tuple[int, int, int],
          settings: XyzSettings) -> GenerationParams:
    """One cell's job: the three axes' values applied, then A1111's "Vary seeds" offsets (seed + the cell's
    position along the varied axes)."""
    for r, i in zip(axes, index):
        params = r.axis.apply(state, params, r.values[i], r.values)
    ix, iy, iz = index
    xdim = len(axes[0].values) if settings.vary_seeds[0] else 1
    ydim = len(axes[1].values) if settings.vary_seeds[1] else 1
    offset = (ix if settings.vary_seeds[0] else 0) + (iy * xdim if settings.vary_seeds[1] else 0) + \
        (iz * xdim * ydim if settings.vary_seeds[2] else 0)
    if offset and params.seed != -1:
        params = dataclasses.replace(params, seed=params.seed + offset)
    try:
        state.opts.snapshot(params.override_settings)  # a checkpoint, VAE or RNG value the settings refuse
    except (KeyError, ValueError) as e:
        raise AxisError(str(e)) from None
    return xyz_axes.check_cell(params)


def run(state: AppState, grid: Plan) -> processing.Processed:
    """Run every cell (on the queue's worker) and return the grid first, then the sub-grids and cells if asked.

    A cell that fails leaves a black cell and a comment (A1111 goes on too); an interrupt stops the remaining
    cells, and the grid shows what was done. Raises the first error when no cell produced anything.
    """
    nx, ny, nz = grid.shape
    base = grid.base
    logger.info("X/Y/Z plot will create %d images on %d %dx%d grid%s", nx * ny * nz * base.image_count, nz, nx, ny,
                "s" if nz > 1 else "")
    results: dict[tuple[int, int, int], processing.Processed] = {}
    comments: list[str] = []
    first_error: Exception | None = None
    with state.job.outer_run(base.mode, sum(job.job_count for job in grid.all_jobs())):
        for ix, iy, iz in grid.order():
            if state.job.interrupted:
                break
            try:
                done = processing.process(state, grid.cells[iz][iy][ix])
                if done.images:  # none when the interrupt came just as the cell began
                    results[ix, iy, iz] = done
            except Exception as e:  # the grid goes on; the cell stays black
                logger.exception("X/Y/Z plot: the cell %s failed", (ix, iy, iz))
                first_error = first_error or e
                comments.append(f"X/Y/Z plot: cell {_cell_name(grid, ix, iy, iz)} failed: {e}")
        _restore_checkpoint(state)
    if not results:
        if first_error is not None:
            raise first_error
        raise RuntimeError("X/Y/Z plot: interrupted before any cell was done")
    return _assemble(state, grid, results, comments)


def _cell_name(grid: Plan, ix: int, iy: int, iz: int) -> str:
    parts = [r.axis.format(r.values[i]) for r, i in zip(grid.axes, (ix, iy, iz)) if r.axis.label != "Nothing"]
    return "(" + "; ".join(parts) + ")"


def _restore_checkpoint(state: AppState) -> None:
    """After a checkpoint axis, the checkpoint the settings name is loaded again (A1111 reloads it too)."""
    wanted, current = str(state.opts["sd_model_checkpoint"] or ""), state.models.current
    if wanted and current is not None and not current.info.matches(wanted):
        state.models.load(state.models.find(wanted))


def _assemble(state: AppState, grid: Plan, results: dict[tuple[int, int, int], processing.Processed],
              comments: list[str]) -> processing.Processed:
    """Draw the sub-grids and the main grid, write their infotexts, save, and build the job's result."""
    nx, ny, nz = grid.shape
    settings, (x, y, z) = grid.settings, grid.axes
    template = next(iter(results.values()))
    size = template.images[0].size  # a cell's picture (its batch's grid when a cell makes several)
    pictures, texts, seeds, prompts = [], [], [], []
    for iz, iy, ix in itertools.product(range(nz), range(ny), range(nx)):
        done = results.get((ix, iy, iz))
        pictures.append(done.images[0] if done else Image.new("RGB", size))
        texts.append(done.infotexts[0] if done else "")
        seeds.append(done.seed if done else grid.cells[iz][iy][ix].seed)
        prompts.append(done.params.prompt if done else grid.cells[iz][iy][ix].prompt)
        comments.extend(c for c in (done.comments if done else []) if c not in comments)
    sub_grids, sub_texts = [], []
    fixed = not settings.no_fixed_seeds
    for iz in range(nz):
        cells = pictures[iz * nx * ny:(iz + 1) * nx * ny]
        sub = images.image_grid(cells, rows=ny)
        if settings.draw_legend:
            sub = grid_legend.annotate(sub, size[0], size[1], [x.axis.format(v) for v in x.values],
                                       [y.axis.format(v) for v in y.values], settings.margin_size)
        sub_grids.append(sub)
        first = texts[iz * nx * ny]
        sub_texts.append(add_fields(first, {"Script": TITLE, **x.infotext_fields("X", fixed),
                                            **y.infotext_fields("Y", fixed)}))
    main = images.image_grid(sub_grids, rows=1)
    if settings.draw_legend:
        main = grid_legend.annotate(main, sub_grids[0].width, sub_grids[0].height,
                                    [z.axis.format(v) for v in z.values], [""])
    main_text = add_fields(sub_texts[0], z.infotext_fields("Z", fixed))
    saved = _save(state, grid, [main, *sub_grids], [main_text, *sub_texts])
    out_images, out_texts, out_seeds, out_prompts = [main], [main_text], [], []
    if settings.include_sub_grids and nz > 1:
        out_images += sub_grids
        out_texts += sub_texts
        out_seeds += [seeds[iz * nx * ny] for iz in range(nz)]
        out_prompts += [prompts[iz * nx * ny] for iz in range(nz)]
    if settings.include_lone_images:
        out_images += pictures
        out_texts += texts
        out_seeds += seeds
        out_prompts += prompts
    out_seeds, out_prompts = out_seeds or seeds[:1], out_prompts or prompts[:1]
    return dataclasses.replace(
        template, images=out_images, infotexts=out_texts, params=grid.base, seed=seeds[0], all_seeds=out_seeds,
        all_subseeds=[grid.base.subseed] * len(out_seeds), all_prompts=out_prompts,
        all_negative_prompts=[grid.base.negative_prompt] * len(out_prompts), index_of_first_image=1,
        comments=comments, saved_paths=saved, extra_generation_params={})


def _save(state: AppState, grid: Plan, pictures: list[Image.Image], texts: list[str]) -> list:
    """A1111's ``grid_save``: the main grid as ``xyz_grid-NNNN.png``, and the sub-grids with "Include Sub Grids"
    when there are several; only when the job saves images (A1111's API saves it even then)."""
    opts = state.opts
    if not (opts["grid_save"] and grid.base.save_images):
        return []
    folder = processing.output_folder(state, opts.snapshot(), f"outdir_{grid.base.mode}_grids")
    count = len(pictures) if grid.settings.include_sub_grids and len(pictures) > 2 else 1
    return [images.save_image(picture, folder, 0, text if opts["enable_pnginfo"] else None, grid=True,
                              prefix="xyz_grid")
            for picture, text in zip(pictures[:count], texts[:count])]


_VERSION_AT_END = re.compile(r", (Version: [^,]*)$")


def add_fields(text: str, fields: dict[str, object]) -> str:
    """An infotext with ``fields`` added to its parameters line, before ``Version`` (where A1111's extra
    generation params go); ``text`` unchanged when there are none."""
    if not fields or not text:
        return text
    head, _, line = text.rpartition("\n")
    added = ", ".join(f"{k}: {infotext.quote(v)}" for k, v in fields.items())
    match = _VERSION_AT_END.search(line)
    line = f"{line[:match.start()]}, {added}, {match[1]}" if match else f"{line}, {added}"
    return f"{head}\n{line}" if head else line
