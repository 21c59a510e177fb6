"""``results/cv/README.md``: the cross-validation results, generated from the saved files only.

``results/cv/`` holds one folder per cross-validated model, as ``mambaseg crossval`` writes it
(``crossval.json``, ``split.json``, ``fold_<i>/`` and, once every fold is done, the out-of-fold
``summary.json``); ``<model>-paper/`` is the same model under the paper preset. ``ablation/<row>/``
holds single training runs (``config.json`` + ``metrics.jsonl`` of ``mambaseg train``), and the
optional ``notes.md`` (hand-written, copied verbatim at the end) and ``machine.json``
(``{"device", "date", "command"}``) describe the runs.

:func:`make_cv_report` writes the README: the main out-of-fold (OOF) table, the per-fold and
post-processing tables of each model, paired per-patient comparisons (each model against
``unet`` under the same preset, and each model's recommended recipe against its paper preset),
the ablation table and the published targets. Missing pieces are said in a sentence, never
fatal.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mambaseg import files as atomic
from mambaseg._version import __version__
from mambaseg.compare import format_p, load_per_patient, paired_comparison, patient_mismatch
from mambaseg.errors import MambasegError
from mambaseg.report.ablation import (ABLATION_DIR, ablation_section, latency_cell,
                                      latency_note, load_ablation, load_latency)
from mambaseg.report.collect import HD95_LABELS, HD95_MAX, HD95_POOLED, Run, hd95_metrics, read_json
from mambaseg.report.tables import (
    MISSING, NOT_AVAILABLE, fmt_ci, fmt_delta, fmt_dice, fmt_int, markdown_table, text_table,
)
from mambaseg.report.tables import as_dict as _dict, as_number as _number, fmt_minutes as _minutes

#: the cross-validation folder inside a results folder
CV_DIR = "cv"
README = "README.md"
NOTES_FILE = "notes.md"
MACHINE_FILE = "machine.json"
#: files of a cross-validation folder (see mambaseg.engine.crossval)
SETTINGS = "crossval.json"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
#: the model every other one is compared with
BASELINE = "unet"
#: the command that regenerates this README
COMMAND = "mambaseg report results"
#: published targets for U-Net on this dataset
AUTHORS_DICE = 0.836
AUTHORS_SOURCE = "Buda et al. 2019, 22-fold cross-validation"
INTER_READER_DICE = 0.84

#: the main table's columns; one HD95 column per definition some summary holds goes in at
#: HD95_AT (see :func:`main_header`)
MAIN_HEADER = [
    "Model", "Preset", "Params", "OOF per-patient Dice [95 % CI]", "Median", "Global Dice",
    "Tumour-slice Dice", "False positives on tumour-free slices",
    "Post-processing", "Per-patient Dice without post-processing", "GPU minutes",
    "CPU ms/slice", "Epochs", "Learning rate",
]
HD95_AT = MAIN_HEADER.index("Tumour-slice Dice") + 1
FOLD_HEADER = ["Fold", "Test patients", "Per-patient Dice", "Global Dice", "Best epoch",
               "Epochs run", "Minutes"]
POST_HEADER = ["Post-processing", "OOF per-patient Dice", "Global Dice", "Tumour-slice Dice",
               "False positives on tumour-free slices", "Chosen"]
COMPARE_HEADER = ["A", "B", "Patients", "Mean A", "Mean B", "Mean diff (A − B)",
                  "Paired 95 % CI", "Median diff", "Wilcoxon p", "Wins/ties/losses of A",
                  "Verdict"]


# ----------------------------------------------------------------------------- reading

@dataclass
class CVModel:
    """One cross-validation folder: ``cv/<name>/``."""

    name: str
    path: Path
    crossval: dict = field(default_factory=dict)
    summary: dict | None = None
    #: config.json of the first fold run found (the resolved settings)
    fold_config: dict = field(default_factory=dict)

    @property
    def settings(self) -> dict:
        return _dict(self.crossval.get("settings")) or _dict((self.summary or {}).get("settings"))

    @property
    def model(self) -> str:
        for src in (self.summary or {}, self.settings, self.fold_config):
            if isinstance(src.get("model"), str) and src["model"]:
                return src["model"]
        return self.name[: -len("-paper")] if self.name.endswith("-paper") else self.name

    @property
    def preset(self) -> str:
        for src in (self.settings, self.fold_config):
            if isinstance(src.get("preset"), str) and src["preset"]:
                return src["preset"]
        return "paper" if self.name.endswith("-paper") else "none"

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def n_folds(self) -> int | None:
        k = self.crossval.get("folds")
        if isinstance(k, int) and not isinstance(k, bool):
            return k
        rows = (self.summary or {}).get("folds")
        return len(rows) if isinstance(rows, list) else None

    def fold_indices(self) -> list[int]:
        """0..K-1 when K is known, else the ``fold_<i>`` folders present."""
        if self.n_folds is not None:
            return list(range(self.n_folds))
        found = []
        for p in self.path.glob("fold_*"):
            suffix = p.name[len("fold_"):]
            if p.is_dir() and suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)

    def folds_done(self) -> list[int]:
        """Folds whose test summary and predictions are written (as crossval.fold_done)."""
        return [i for i in self.fold_indices()
                if (self.path / f"fold_{i}" / SUMMARY).is_file()
                and (self.path / f"fold_{i}" / PREDICTIONS).is_file()]

    @property
    def epochs(self) -> int | None:
        for src in (self.fold_config, self.settings):
            n = _number(src.get("epochs"))
            if n is not None:
                return int(n)
        runs = [_number(r.get("epochs")) for r in self.fold_rows()]
        runs = [int(r) for r in runs if r is not None]
        return max(runs) if runs else None

    def fold_rows(self) -> list[dict]:
        rows = (self.summary or {}).get("folds")
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def metric(self, name: str) -> dict:
        return _dict((self.summary or {}).get(name))

    def hd95(self) -> dict[str, dict]:
        """The OOF HD95 by definition (:func:`mambaseg.report.collect.hd95_metrics`)."""
        return hd95_metrics(self.summary)


def _sort_key(m: CVModel) -> tuple:
    return (m.model != BASELINE, m.name != BASELINE, m.name)


def load_cv_models(cv_dir: Path) -> list[CVModel]:
    """Every cross-validation folder under ``cv_dir`` (``unet`` first, then by name)."""
    models = []
    for d in sorted(p for p in cv_dir.iterdir() if p.is_dir()):
        if d.name == ABLATION_DIR or d.name.startswith("."):
            continue
        has_folds = any(p.is_dir() for p in d.glob("fold_*"))
        if not ((d / SETTINGS).is_file() or (d / SUMMARY).is_file() or has_folds):
            continue
        m = CVModel(name=d.name, path=d)
        if (d / SETTINGS).is_file():
            m.crossval = _dict(read_json(d / SETTINGS))
        if (d / SUMMARY).is_file():
            m.summary = _dict(read_json(d / SUMMARY))
        for i in m.fold_indices():
            cfg = d / f"fold_{i}" / "config.json"
            if cfg.is_file():
                m.fold_config = _dict(read_json(cfg))
                break
        models.append(m)
    return sorted(models, key=_sort_key)


# ----------------------------------------------------------------------------- formatting

def fmt_fpr(fpr: dict | None) -> str:
    """'12/222 slices (5.4 %)': tumour-free slices with any predicted pixel."""
    fpr = _dict(fpr)
    n, x, mean = (fpr.get("n_empty_slices"), fpr.get("n_false_positive_slices"),
                  _number(fpr.get("mean")))
    if isinstance(n, int) and isinstance(x, int) and n > 0:
        return f"{x}/{n} slices ({100.0 * x / n:.1f} %)"
    return MISSING if mean is None else f"{100.0 * mean:.1f} %"


def fmt_fpr_rate(mean: Any, n_empty: Any) -> str:
    """A variant's fpr_empty (a rate only) as 'x/y slices (z %)' given the number of slices."""
    mean = _number(mean)
    if mean is None:
        return MISSING
    if isinstance(n_empty, int) and n_empty > 0:
        return fmt_fpr({"mean": mean, "n_empty_slices": n_empty,
                        "n_false_positive_slices": int(round(mean * n_empty))})
    return f"{100.0 * mean:.1f} %"


def _dice(x: Any) -> str:
    return fmt_dice(_number(x))


def _lr(cfg: dict) -> str:
    lr = _number(cfg.get("lr"))
    return MISSING if lr is None else f"{lr:g}"


def _name(m: CVModel) -> str:
    return f"`{m.name}`"


def _setup(m: CVModel) -> str:
    """The preset, plus the input channels and model options when they are not the defaults."""
    cfg = m.fold_config
    parts = [m.preset]
    if cfg.get("channels") not in (None, "all"):
        parts.append(f"{str(cfg['channels']).upper()} only")
    kwargs = cfg.get("model_kwargs")
    if isinstance(kwargs, dict) and kwargs:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())))
    return ", ".join(parts)


def not_finished(m: CVModel) -> str:
    done = m.folds_done()
    return f"not finished (folds done: {', '.join(map(str, done)) if done else 'none'})"


def hd95_definitions(models: list[CVModel]) -> list[str]:
    """The HD95 definitions held by some finished model's summary, in table order."""
    held = {d for m in models for d in m.hd95()}
    return [d for d in HD95_LABELS if d in held]


def main_header(definitions: list[str]) -> list[str]:
    """:data:`MAIN_HEADER` with one column per HD95 definition, named by it."""
    hd = [f"{HD95_LABELS[d]} (px)" for d in definitions]
    return MAIN_HEADER[:HD95_AT] + hd + MAIN_HEADER[HD95_AT:]


def main_row(m: CVModel, definitions: list[str], latency: dict | None = None) -> list[str]:
    """The model's cells of the main table (:func:`main_header` of ``definitions``); an HD95
    its summary does not hold is ``n/a``. ``latency``: ``ablation/cpu_latency.json``, looked
    up by the model and its options (``model_spec``)."""
    if not m.finished:
        n = len(main_header(definitions))
        return [_name(m), _setup(m), MISSING, not_finished(m)] + [MISSING] * (n - 6) \
            + [fmt_int(m.epochs), _lr(m.fold_config)]
    s = m.summary
    dp, hd = m.metric("dice_patient"), m.hd95()
    params = _number(s.get("parameters"))
    hd_cells = []
    for d in definitions:
        mean = _number(hd[d].get("mean")) if d in hd else None
        hd_cells.append(NOT_AVAILABLE if d not in hd else MISSING if mean is None else f"{mean:.1f}")
    return [
        _name(m), _setup(m), fmt_int(None if params is None else int(params)),
        fmt_ci(dp) if _number(dp.get("mean")) is not None else MISSING,
        _dice(dp.get("median")),
        _dice(m.metric("dice_global").get("mean")),
        _dice(m.metric("dice_slice").get("tumour_mean")),
        *hd_cells,
        fmt_fpr(m.metric("fpr_empty")),
        str(s.get("postprocess_describe") or MISSING),
        _dice(_dict(s.get("without_postprocess")).get("dice_patient")),
        _minutes(s.get("train_minutes")),
        latency_cell(latency or {}, m.fold_config),
        fmt_int(m.epochs),
        _lr(m.fold_config),
    ]


def fold_table(m: CVModel) -> str:
    rows = []
    for r in m.fold_rows():
        best = r.get("best_epoch")
        rows.append([str(r.get("fold", MISSING)), fmt_int(r.get("n_patients")),
                     _dice(r.get("dice_patient")), _dice(r.get("dice_global")),
                     MISSING if best is None else str(best), fmt_int(r.get("epochs")),
                     _minutes(r.get("train_minutes"))])
    return markdown_table(FOLD_HEADER, rows)


def post_table(m: CVModel) -> str:
    n_empty = m.metric("fpr_empty").get("n_empty_slices")
    chosen = _dict(m.summary.get("postprocess"))
    rows = []
    for v in m.summary.get("postprocess_variants") or []:
        v = _dict(v)
        rows.append([str(v.get("describe") or MISSING), _dice(v.get("dice_patient")),
                     _dice(v.get("dice_global")), _dice(v.get("dice_slice_tumour")),
                     fmt_fpr_rate(v.get("fpr_empty"), n_empty),
                     "✓" if chosen and _dict(v.get("postprocess")) == chosen else ""])
    return markdown_table(POST_HEADER, rows)


# ----------------------------------------------------------------------------- comparisons

def per_patient(m: CVModel) -> dict[str, float]:
    """{patient: dice} of the model's OOF summary (after its chosen post-processing)."""
    return load_per_patient(m.path / SUMMARY)[1]


def compare(a: CVModel, b: CVModel) -> tuple[list[str] | None, str | None]:
    """A table row comparing A's per-patient Dice with B's, or None and why not."""
    try:
        pa, pb = per_patient(a), per_patient(b)
        msg = patient_mismatch(pa, pb, a.name, b.name)
        if msg:
            return None, f"`{a.name}` vs `{b.name}`: not compared, {msg}."
        c = paired_comparison(pa, pb)
    except MambasegError as exc:
        return None, f"`{a.name}` vs `{b.name}`: not compared ({exc})."
    verdict = c["verdict"].replace("A better", f"{a.name} better", 1).replace(
        "B better", f"{b.name} better", 1)
    row = [_name(a), _name(b), str(c["n"]), fmt_dice(c["mean_a"]), fmt_dice(c["mean_b"]),
           fmt_delta(c["mean_diff"]), f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
           fmt_delta(c["median_diff"]), format_p(c["p_wilcoxon"]),
           f"{c['wins']}/{c['ties']}/{c['losses']}", verdict]
    return row, None


def _pick(models: list[CVModel], preferred: str) -> CVModel | None:
    """The folder named ``preferred`` among ``models``, else the first."""
    for m in models:
        if m.name == preferred:
            return m
    return models[0] if models else None


def _preset_folder(model: str, preset: str) -> str:
    return f"{model}-paper" if preset == "paper" else model


def comparisons_section(models: list[CVModel]) -> str:
    out = ["## Paired comparisons (per-patient Dice)", "",
           "Each model's out-of-fold per-patient Dice (after its chosen post-processing, as in the "
           "main table) minus that of the other result, patient by patient over the same patients: "
           "the interval is a paired bootstrap of the mean difference (10,000 resamples of "
           "patients), the test the two-sided Wilcoxon signed-rank test; *wins* are patients where "
           "A's Dice is higher. Models are compared with every `unet` cross-validated under the "
           "same preset (the Learning rate and Epochs columns of the main table say where their "
           "settings differ), and a model's recommended recipe with its paper preset.", ""]
    finished = [m for m in models if m.finished]
    baselines: dict[str, list[CVModel]] = {}
    for m in finished:
        if m.model == BASELINE:
            baselines.setdefault(m.preset, []).append(m)
    pairs: list[tuple[CVModel, CVModel]] = []
    skipped: list[str] = []
    for m in finished:
        if m.model == BASELINE:
            continue
        bases = baselines.get(m.preset, [])
        if not bases:
            skipped.append(f"`{m.name}`: no finished `{BASELINE}` cross-validation under the "
                           f"{m.preset} preset to compare with.")
        pairs += [(m, base) for base in bases]
    by_model: dict[str, dict[str, list[CVModel]]] = {}
    for m in finished:
        by_model.setdefault(m.model, {}).setdefault(m.preset, []).append(m)
    for model, presets in by_model.items():
        rec = _pick(presets.get("recommended", []), model)
        pap = _pick(presets.get("paper", []), f"{model}-paper")
        if rec is not None and pap is not None:
            pairs.append((rec, pap))
    skipped += [f"`{m.name}`: {not_finished(m)}, not compared yet." for m in models
                if not m.finished]
    rows = []
    for a, b in pairs:
        row, why = compare(a, b)
        if row is not None:
            rows.append(row)
        else:
            skipped.append(why)
    if rows:
        out.append(markdown_table(COMPARE_HEADER, rows))
    elif not finished:
        out.append("No finished cross-validation to compare yet.")
    elif not any(m.model == BASELINE for m in finished):
        out.append(f"No comparison: no finished `{BASELINE}` cross-validation here, and no model "
                   "with both a recommended and a paper-preset cross-validation.")
    else:
        out.append("No pair of finished cross-validations to compare yet.")
    if skipped:
        out += [""] + [f"- {s}" for s in skipped]
    return "\n".join(out)


# ----------------------------------------------------------------------------- the README

def targets_section(models: list[CVModel]) -> str:
    out = ["## Targets", ""]
    unets = [m for m in models if m.model == BASELINE and m.finished]
    if not unets:
        out.append(f"No finished `{BASELINE}` cross-validation yet: nothing to compare with the "
                   f"published {AUTHORS_DICE} ({AUTHORS_SOURCE}) and the inter-reader "
                   f"{INTER_READER_DICE}.")
        return "\n".join(out)
    for m in unets:
        dp = m.metric("dice_patient")
        mean = _number(dp.get("mean"))
        if mean is None:
            out.append(f"- `{m.name}`: its summary has no per-patient Dice.")
            continue
        ci = dp.get("ci95")
        where = ""
        if isinstance(ci, list) and len(ci) == 2 and all(_number(v) is not None for v in ci):
            inside = ci[0] <= AUTHORS_DICE <= ci[1]
            where = (f"; {AUTHORS_DICE} is {'inside' if inside else 'outside'} our 95 % interval "
                     f"[{ci[0]:.3f}, {ci[1]:.3f}]")
        out.append(f"- `{m.name}` ({m.preset} preset): OOF per-patient Dice {mean:.4f} vs "
                   f"{AUTHORS_DICE} of the authors ({AUTHORS_SOURCE}; Δ {mean - AUTHORS_DICE:+.4f})"
                   f" and {INTER_READER_DICE} between human readers "
                   f"(Δ {mean - INTER_READER_DICE:+.4f}){where}.")
    return "\n".join(out)


def machine_line(cv_dir: Path) -> list[str]:
    """The machine and command of each GPU session: ``machine.json`` is one
    ``{"device", "date", "command", "runs"?}`` object or ``{"sessions": [such objects]}``."""
    path = cv_dir / MACHINE_FILE
    if not path.is_file():
        return [f"(No `{MACHINE_FILE}`: the machine and command were not recorded.)", ""]
    doc = read_json(path)
    sessions = doc.get("sessions") if isinstance(doc, dict) and "sessions" in doc else [doc]
    if not isinstance(sessions, list) or not all(isinstance(d, dict) for d in sessions):
        return [f"(`{MACHINE_FILE}` is not an object: the machine is not shown.)", ""]
    out = []
    for d in sessions:
        runs = f" ({d['runs']})" if d.get("runs") else ""
        out.append(f"Run on **{d.get('device') or MISSING}**"
                   + (f", {d['date']}" if d.get("date") else "") + runs + ".")
        if d.get("command"):
            out += ["", "```sh", str(d["command"]).rstrip(), "```"]
        out.append("")
    return out


def hd95_note(models: list[CVModel], definitions: list[str]) -> str:
    """The main table's note on its HD95 column(s): the definition each holds, and which
    summaries lack one."""
    text = ("- **HD95**: mean over tumour slices with a non-empty prediction of the 95 % "
            "Hausdorff distance (pixels), by the definition its column names "
            "(`docs/metrics.md`): *max of directed* is the larger of the two directed 95th "
            "percentiles, as MONAI and DeepMind's surface-distance compute it; *pooled* is the "
            "95th percentile of both directions' distances pooled, as medpy computes it "
            "(never larger, up to interpolation).")
    legacy = [_name(m) for m in models if m.finished and HD95_POOLED in m.hd95()
              and HD95_MAX not in m.hd95()]
    if legacy and HD95_MAX in definitions:
        text += (f" `{NOT_AVAILABLE}`: the summary of {', '.join(legacy)} was written before "
                 "both were recorded and holds the pooled one only.")
    elif legacy:
        text += (" These summaries were written before both were recorded and hold the pooled "
                 "one only; the max-of-directed one is not shown (it needs the dataset's masks to "
                 "be recomputed from `predictions.npz`).")
    return text


def render(cv_dir: Path, models: list[CVModel], ablation: list[Run] | None) -> str:
    finished = [m for m in models if m.finished]
    definitions = hd95_definitions(models)
    latency = load_latency(cv_dir)
    parts = [
        "# Cross-validation results",
        "",
        f"_Generated by `{COMMAND}` (mambaseg {__version__}) from the saved `crossval.json`, "
        "`summary.json`, `fold_<i>/` and `ablation/` files under `results/cv/`; do not edit by "
        f"hand — notes go in `cv/{NOTES_FILE}`._",
        "",
        *machine_line(cv_dir),
        "Patient-level K-fold cross-validation (`mambaseg crossval`): every patient is in exactly "
        "one test fold and is predicted by the one fold model that never saw it; the out-of-fold "
        "(OOF) predictions of all patients are scored as one result.",
        "",
        "## Main table",
        "",
    ]
    if models:
        parts += [
            f"{len(finished)} of {len(models)} cross-validations finished.",
            "",
            markdown_table(main_header(definitions),
                           [main_row(m, definitions, latency) for m in models]),
            "",
            "- **OOF per-patient Dice**: mean over patients of each patient's Dice (all its slices "
            "pooled), with the 95 % bootstrap interval over patients; **global Dice** pools every "
            "pixel; **tumour-slice Dice**: mean over slices with tumour.",
            *([hd95_note(models, definitions)] if definitions else []),
            "- **False positives on tumour-free slices**: tumour-free slices with any predicted "
            "pixel.",
            "- **Post-processing**: the candidate with the highest OOF per-patient Dice, applied to "
            "every number of the row; it is chosen on the same OOF predictions, so those numbers "
            "are slightly optimistic — the per-patient Dice *without* post-processing is the "
            "unbiased one.",
            "- **GPU minutes**: the sum of the folds' training wall times; the folds ran side by "
            "side, so this is not the elapsed time. **Epochs**: planned per fold.",
            "- " + latency_note(latency),
        ]
    else:
        parts.append("No cross-validation saved yet.")
    parts.append("")
    if finished:
        parts += ["## Per-fold results", ""]
        for m in finished:
            parts += [f"### `{m.name}`", "", fold_table(m), ""]
        parts += ["## Post-processing", "",
                  "Every post-processing candidate scored on the OOF predictions (✓: the one "
                  "chosen).", ""]
        for m in finished:
            parts += [f"### `{m.name}`", "", post_table(m), ""]
    parts += [comparisons_section(models), "",
              ablation_section(ablation, latency), "", targets_section(models), ""]
    notes = cv_dir / NOTES_FILE
    if notes.is_file():
        parts += [f"## Notes (`{NOTES_FILE}`, written by hand)", "",
                  notes.read_text(encoding="utf-8").strip(), ""]
    return "\n".join(parts)


def make_cv_report(cv_dir: str | Path, out: str | Path | None = None) -> tuple[Path, str]:
    """Write ``README.md`` of the cross-validation folder ``cv_dir`` (into ``out``, default
    ``cv_dir``); returns its path and the main table as plain text."""
    cv_dir = Path(cv_dir)
    models = load_cv_models(cv_dir)
    text = render(cv_dir, models, load_ablation(cv_dir))
    path = atomic.write_text(Path(out if out is not None else cv_dir) / README, text)
    definitions = hd95_definitions(models)
    table = text_table(main_header(definitions), [main_row(m, definitions) for m in models]) \
        if models else "No cross-validation saved yet."
    return path, table
