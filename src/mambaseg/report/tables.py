"""Table I of the reproduction: one row per model, built from saved runs and the paper's numbers."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from mambaseg.models import count_parameters, list_models
from mambaseg.report.collect import Run
from mambaseg.report.paper import PAPER_MODELS, PaperEntry, PaperTable

NOT_RUN = "not run"
MISSING = "—"
#: a value a saved summary does not hold (written before the report asked for it)
NOT_AVAILABLE = "n/a"
#: appended to the numbers of a run whose evaluation is marked wrong in invalid.json
INVALID_MARK = " ✗"
#: a row is listed under "Differences from the paper" when |ours - paper| exceeds this
TOLERANCE = 0.01
#: the verdicts of the seed spread: the paper's dice_paper within [min, max] of our seeds or not
WITHIN_RANGE, REAL_GAP, ONE_SEED = "paper within our range", "real gap", "1 seed: not known"


def as_number(x: Any) -> float | None:
    """``x`` as a finite float, else None (missing, NaN, not a number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def fmt_minutes(x: Any) -> str:
    x = as_number(x)
    return MISSING if x is None else f"{x:.1f}"


def fmt_int(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def fmt_dice(x: float | None) -> str:
    return MISSING if x is None else f"{x:.4f}"


def fmt_delta(x: float | None) -> str:
    return MISSING if x is None else f"{x:+.4f}"


def fmt_duration(s: float | None) -> str:
    """Seconds as '12.3 s', '4 min 05 s' or '2 h 07 min'."""
    if s is None:
        return MISSING
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h} h {rem // 60:02d} min"


def fmt_ci(m: dict | None) -> str:
    """'mean [lo, hi]' from a metric object with ``mean`` and optional ``ci95``."""
    if not m:
        return MISSING
    ci = m.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{m['mean']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return fmt_dice(m["mean"])


def fmt_epochs(run: Run | None, paper_epochs: int | None = None) -> str:
    """'done/planned', marked when incomplete or when the plan differs from the paper's epochs."""
    if run is None:
        return NOT_RUN
    done, planned = run.epochs_run, run.epochs_planned
    if done is None and planned is None:
        return MISSING
    text = f"{done if done is not None else MISSING}/{planned if planned is not None else '?'}"
    if done is not None and planned is not None and done < planned:
        text += " (incomplete)"
    if paper_epochs and planned is not None and planned != paper_epochs:
        text += f" (paper {paper_epochs})"
    return text


#: (registry name, parameter count of a saved run) -> the model that run really was: runs of the
#: transformers-based network saved before ``segformer`` became the seed's own SegFormer
RENAMED = {("segformer", 17_597_057): "segformer_mit_b0"}


@dataclass
class Row:
    """One model: its paper-protocol and patient-protocol runs and the published numbers."""

    model: str
    paper: PaperEntry | None
    paper_run: Run | None
    patient_run: Run | None
    paper_epochs: int | None = None

    @property
    def any_run(self) -> Run | None:
        return self.paper_run or self.patient_run

    @property
    def parameters(self) -> int | None:
        """From a run's config; for a model without runs, counted from the registry."""
        for run in (self.paper_run, self.patient_run):
            if run is not None and run.parameters is not None:
                return run.parameters
        return count_parameters(self.model) if self.model in list_models() else None

    @property
    def label(self) -> str:
        """The model's name, plus the network its runs actually trained where the name has since
        changed meaning (:data:`RENAMED`)."""
        ran = RENAMED.get((self.model, self.parameters))
        return f"`{self.model}`" if ran is None else f"`{self.model}` (ran as `{ran}`)"

    @property
    def dice_paper(self) -> float | None:
        m = self.paper_run.metric("dice_paper") if self.paper_run else None
        return None if m is None else float(m["mean"])

    @property
    def published_dice(self) -> float | None:
        return None if self.paper is None else self.paper.dice

    @property
    def delta(self) -> float | None:
        if self.dice_paper is None or self.published_dice is None:
            return None
        return self.dice_paper - self.published_dice

    @property
    def differs(self) -> bool:
        return self.delta is not None and abs(self.delta) > TOLERANCE + 1e-12

    @property
    def spread(self) -> SeedSpread:
        """dice_paper over the seeds of the paper-protocol run."""
        return SeedSpread(self.paper_run.seed_runs if self.paper_run else [], self.published_dice)

    def cells(self) -> list[str]:
        """The row's cells, in the order of :data:`HEADER`."""
        pr, qr = self.paper_run, self.patient_run
        params = fmt_int(self.parameters) if self.parameters is not None else NOT_RUN
        pub_params = self.paper.parameters if self.paper else None
        if self.parameters is not None and pub_params is not None and self.parameters != pub_params:
            params += " ≠"
        slice_dice = qr.metric("dice_slice") if qr else None
        tumour_dice = None if slice_dice is None else slice_dice.get("tumour_mean")
        patient_dice = qr.metric("dice_patient") if qr else None
        pmark = INVALID_MARK if pr and pr.invalid else ""
        qmark = INVALID_MARK if qr and qr.invalid else ""
        return [
            self.label,
            params,
            fmt_int(pub_params) if self.paper else "n/a",
            (fmt_dice(self.dice_paper) + pmark if pr else NOT_RUN),
            (fmt_dice(self.published_dice) if self.paper and self.published_dice is not None else "n/a"),
            fmt_delta(self.delta) + (pmark if self.delta is not None else ""),
            (fmt_dice(None if slice_dice is None else float(slice_dice["mean"])) + qmark if qr else NOT_RUN),
            (NOT_RUN if not qr else MISSING if slice_dice is None
             else NOT_AVAILABLE if not isinstance(tumour_dice, (int, float))
             else fmt_dice(float(tumour_dice)) + qmark),
            (fmt_ci(patient_dice) + qmark if qr else NOT_RUN),
            (fmt_duration(pr.epoch_time_s) if pr else NOT_RUN),
            (fmt_duration(pr.train_time_s) if pr else NOT_RUN)
            + (f" (paper {fmt_duration(self.paper.train_time_s)})" if self.paper and self.paper.train_time_s else ""),
            fmt_epochs(pr, self.paper_epochs),
            ((pr.device or MISSING) if pr else NOT_RUN),
        ]


@dataclass
class SeedSpread:
    """One model's paper-protocol runs, one per seed, against the paper's dice_paper."""

    runs: list[Run]
    published: float | None

    @cached_property
    def values(self) -> list[float]:
        """dice_paper of each seed whose summary holds it."""
        ms = [r.metric("dice_paper") for r in self.runs]
        return [float(m["mean"]) for m in ms if m is not None]

    @property
    def range(self) -> str:
        """'min–max' of the seeds' dice_paper, with at least two seeds."""
        values = self.values
        return f"{min(values):.4f}–{max(values):.4f}" if len(values) >= 2 else MISSING

    @property
    def train_minutes(self) -> float | None:
        """Training minutes summed over the seeds; None unless every seed records its epoch times."""
        times = [r.train_time_s for r in self.runs]
        return None if not times or None in times else sum(times) / 60

    @property
    def verdict(self) -> str:
        values = self.values
        if len(values) < 2:
            return ONE_SEED if values else MISSING
        if self.published is None:
            return NOT_AVAILABLE
        return WITHIN_RANGE if min(values) <= self.published <= max(values) else REAL_GAP

    def cells(self, label: str, delta: float | None) -> list[str]:
        """The cells of :data:`SPREAD_HEADER`."""
        values = self.values
        several = len(values) >= 2
        mark = INVALID_MARK if any(r.invalid for r in self.runs) else ""
        return [
            label, fmt_delta(delta), str(len(values)),
            (f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if several
             else fmt_dice(values[0] if values else None)),
            self.range,
            fmt_dice(self.published), fmt_minutes(self.train_minutes),
            ", ".join(dict.fromkeys(fmt_epochs(r) for r in self.runs)),
            self.verdict + mark,
        ]


SPREAD_HEADER = ["Model", "Δ (seed 0)", "Seeds", "dice_paper mean ± sd", "Range (min–max)", "Dice (paper)",
                 "Training minutes (all seeds)", "Epochs run/planned", "Verdict"]


def spread_rows(rows: list[Row]) -> list[list[str]]:
    """The seed-spread table: every model with a paper-protocol run."""
    return [r.spread.cells(r.label, r.delta) for r in rows if r.paper_run is not None]


HEADER = [
    "Model", "Params (ours)", "Params (paper)", "dice_paper (ours)", "Dice (paper)", "Δ",
    "Per-slice Dice (all slices), patient split", "Tumour-slice Dice, patient split",
    "Per-patient Dice, patient split [95 % CI]",
    "Epoch time", "Training time", "Epochs run/planned", "Machine",
]


def patient_slice_counts(rows: list[Row]) -> tuple[int, int] | None:
    """(test slices, tumour slices among them) of the patient-protocol runs, from their
    ``dice_slice`` (``n``, ``n_tumour``); None when no run records them or the runs disagree."""
    counts = set()
    for r in rows:
        m = r.patient_run.metric("dice_slice") if r.patient_run else None
        if m is not None and isinstance(m.get("n"), int) and isinstance(m.get("n_tumour"), int):
            counts.add((m["n"], m["n_tumour"]))
    return counts.pop() if len(counts) == 1 else None


def build_rows(runs: dict[tuple[str, str], Run], paper: PaperTable) -> list[Row]:
    """One row per model: the paper's models in its order, then any other model that was run."""
    order = list(paper.entries) or list(PAPER_MODELS)
    extra = sorted({m for (_, m) in runs} - set(order))
    return [
        Row(model=m, paper=paper.get(m), paper_run=runs.get(("paper", m)), patient_run=runs.get(("patient", m)),
            paper_epochs=paper.epochs)
        for m in order + extra
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned after the first column)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """The same table as aligned plain text, for the terminal."""
    clean = [[c.replace("`", "") for c in r] for r in [header] + rows]
    widths = [max(len(r[i]) for r in clean) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(clean[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in clean[1:]])


RUNS_HEADER = ["Protocol", "Model", "Machine", "Epochs run/planned", "Epoch time", "Training time",
               "Images/s", "Best val Dice", "Evaluated checkpoint", "Predictions"]


def runs_rows(runs: dict[tuple[str, str], Run], order: list[str] | None = None) -> list[list[str]]:
    """Every saved run, for the 'Training runs' table (protocol, then ``order`` of models)."""
    rank = {m: i for i, m in enumerate(order or [])}
    out = []
    for (protocol, model), run in sorted(runs.items(), key=lambda kv: (kv[0][0] != "paper", kv[0][0],
                                                                        rank.get(kv[0][1], len(rank)), kv[0][1])):
        ips = run.images_per_s
        out.append([
            protocol, f"`{model}`", run.device or MISSING, fmt_epochs(run),
            fmt_duration(run.epoch_time_s), fmt_duration(run.train_time_s),
            MISSING if ips is None else f"{ips:.0f}", fmt_dice(run.best_val_dice),
            ((run.evaluated_checkpoint or "yes")
             + (f" (config.json: {run.recorded_checkpoint})" if run.checkpoint_mismatch else "")
             + (INVALID_MARK if run.invalid else ""))
            if run.summary else "no",
            "yes" if run.has_predictions else "no",
        ])
    return out
