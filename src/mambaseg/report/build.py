"""``make_report``: regenerate README.md and the figures of a results folder from its saved files."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mambaseg import files as atomic
from mambaseg.data.splits import split_rels
from mambaseg.errors import DataError, MambasegError
from mambaseg.inference.predictions import Predictions
from mambaseg.report.collect import load_runs, read_json
from mambaseg.report.cv import CV_DIR, make_cv_report
from mambaseg.report.datastats import (
    DATA_STATS, compute_data_stats, load_data_stats, natural_order, split_path, tumour_flags,
)
from mambaseg.report.figures import FIG1, FIG2, FIG3, fig1_data, fig2_dice_params, fig3_samples
from mambaseg.report.notes import load_notes
from mambaseg.report.paper import load_paper_table
from mambaseg.report.readme import render
from mambaseg.report.samples import (
    FIG3_INPUTS, PREDICTIONS, Fig3Inputs, build_fig3_inputs, choose_evenly, fig3_arrays,
    load_fig3_inputs, parse_slices,
)
from mambaseg.report.tables import HEADER, build_rows, text_table

FIGURES_DIR = "figures"
README = "README.md"
REPRODUCE_LOG = "reproduce.json"


@dataclass
class ReportResult:
    """What ``make_report`` wrote, the table as text for the terminal, and any warnings."""

    readme: Path
    figures: dict[str, Path | None]
    table: str
    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the cross-validation main table as text, when ``results_dir/cv/`` exists
    cv_table: str | None = None


def make_report(results_dir: str | Path, data: str | Path | None = None, out: str | Path | None = None,
                slices: str | int | list[str] | None = None, dpi: int = 120) -> ReportResult:
    """Regenerate ``README.md`` and ``figures/*.png`` from the files saved in ``results_dir``.

    With ``data`` (the dataset folder), Fig. 1's counts and Fig. 3's images are read from the
    dataset and saved as ``data_stats.json`` and ``fig3_inputs.npz``, so later reports need only
    the results folder. ``slices`` chooses Fig. 3's slices: a count or a list of slice paths.
    Missing runs, figures or inputs are reported, never fatal. When ``results_dir/cv/`` exists,
    its ``README.md`` (the cross-validation results, :mod:`mambaseg.report.cv`) is written too,
    as ``out/cv/README.md``.
    """
    results = Path(results_dir)
    out_dir = Path(out) if out is not None else results
    if not results.is_dir():
        raise DataError(f"results folder not found: {results}")
    if data is not None and not Path(data).exists():
        raise DataError(f"--data: {data} does not exist")
    chosen = slices if isinstance(slices, (int, list)) else parse_slices(slices)
    paper = load_paper_table(results)
    runs = load_runs(results)
    rows = build_rows(runs, paper)
    notes = load_notes(results)
    warnings: list[str] = []
    written: list[Path] = []
    if not paper.entries:
        warnings.append(f"no `paper_table1.json` in {results}: the paper's columns are empty")

    # Fig. 1 ------------------------------------------------------------------------------
    stats = None
    if data is not None:
        try:
            stats = compute_data_stats(results, data)
            written.append(atomic.write_json(out_dir / DATA_STATS, stats))
        except DataError as exc:
            warnings.append(f"Fig. 1 counts not computed from --data: {exc}")
    if stats is None:
        stats = load_data_stats(results) or (load_data_stats(out_dir) if out_dir != results else None)
    figures: dict[str, Path | None] = {FIG1: None, FIG2: None, FIG3: None}
    fig_dir = out_dir / FIGURES_DIR
    if stats:
        figures[FIG1] = atomic.save_figure(fig1_data(stats), fig_dir / FIG1, dpi=dpi)
    else:
        warnings.append("Fig. 1 not drawn: no `data_stats.json` (run `mambaseg report RESULTS --data PATH` once)")

    # Fig. 2 ------------------------------------------------------------------------------
    figures[FIG2] = atomic.save_figure(fig2_dice_params(rows), fig_dir / FIG2, dpi=dpi)

    # Fig. 3 ------------------------------------------------------------------------------
    predictions = {
        r.model: Predictions(r.paper_run.path / PREDICTIONS)
        for r in rows if r.paper_run is not None and r.paper_run.has_predictions
        and not r.paper_run.invalid  # a wrong evaluation, to be redone: not drawn
    }
    inputs = _fig3_inputs(results, out_dir, data, chosen, predictions, warnings, written)
    if inputs is not None and (predictions or inputs.images is not None):
        figures[FIG3] = atomic.save_figure(fig3_samples(inputs, predictions), fig_dir / FIG3, dpi=dpi)
    else:
        warnings.append("Fig. 3 not drawn: no paper-protocol `predictions.npz` and no `fig3_inputs.npz`")
    written += [p for p in figures.values() if p is not None]

    # README ------------------------------------------------------------------------------
    log_path = results / REPRODUCE_LOG
    log = read_json(log_path) if log_path.is_file() else None
    text = render(results, out_dir, rows, runs, paper, notes, figures, log, data is not None, warnings)
    readme = atomic.write_text(out_dir / README, text)
    written.append(readme)

    # cv/README.md ------------------------------------------------------------------------
    cv_table = None
    if (results / CV_DIR).is_dir():
        cv_readme, cv_table = make_cv_report(results / CV_DIR, out_dir / CV_DIR)
        written.append(cv_readme)
    return ReportResult(readme=readme, figures=figures, table=text_table(HEADER, [r.cells() for r in rows]),
                        written=written, warnings=warnings, cv_table=cv_table)


def _fig3_inputs(results: Path, out_dir: Path, data, chosen, predictions: dict[str, Predictions],
                 warnings: list[str], written: list[Path]) -> Fig3Inputs | None:
    """Fig. 3's slices: read from --data (and saved), else the saved npz, else predictions only."""
    paper_split = split_path(results, "paper")
    if data is not None:
        if paper_split.is_file():
            test = split_rels(paper_split)["test"]
            flags = tumour_flags(data, test) if isinstance(chosen, int) else {}
            inputs = build_fig3_inputs(data, test, flags, chosen)
            written.append(atomic.save_npz(out_dir / FIG3_INPUTS, **fig3_arrays(inputs)))
            return inputs
        if isinstance(chosen, list):
            inputs = build_fig3_inputs(data, [], {}, chosen)
            written.append(atomic.save_npz(out_dir / FIG3_INPUTS, **fig3_arrays(inputs)))
            return inputs
        warnings.append(f"Fig. 3 slices not read from --data: {paper_split} is missing")
    saved = load_fig3_inputs(results / FIG3_INPUTS) or load_fig3_inputs(out_dir / FIG3_INPUTS)
    if saved is not None:
        if isinstance(chosen, list):
            absent = [r for r in chosen if r not in saved.rels]
            if absent:
                raise MambasegError(f"--slices: {absent[0]!r} is not in {FIG3_INPUTS}; give --data to read it")
            return saved.subset(chosen)
        if chosen > len(saved.rels):
            warnings.append(f"Fig. 3 shows the {len(saved.rels)} slices saved in {FIG3_INPUTS} "
                            f"(asked for {chosen}; give --data to choose more)")
        return saved.subset(choose_evenly(saved.rels, chosen))
    if not predictions:
        return None
    common = set.intersection(*(set(p.rels) for p in predictions.values()))
    pool = natural_order(list(common))
    if paper_split.is_file():
        test = split_rels(paper_split)["test"]
        pool = natural_order([r for r in test if r in common]) or pool
    rels = chosen if isinstance(chosen, list) else choose_evenly(pool, chosen)
    warnings.append(f"Fig. 3 drawn without images or ground truth: no {FIG3_INPUTS} "
                    "(run `mambaseg report RESULTS --data PATH` once to save it)")
    return Fig3Inputs(rels, None, None, note="no images saved: slices chosen among all test slices")
