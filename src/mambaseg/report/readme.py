"""``results/README.md``: the table, the differences from the paper, the figures and the commands."""
from __future__ import annotations

import os
from pathlib import Path

from mambaseg._version import __version__
from mambaseg.report.collect import Run
from mambaseg.report.paper import PaperTable
from mambaseg.report.tables import (
    HEADER, NOT_AVAILABLE, ONE_SEED, REAL_GAP, RUNS_HEADER, SPREAD_HEADER, TOLERANCE, WITHIN_RANGE, Row,
    fmt_delta, fmt_dice, markdown_table, patient_slice_counts, runs_rows, spread_rows,
)

NO_EXPLANATION = "**⚠ No explanation recorded yet.**"
FIGURE_CAPTIONS = {
    "fig1_data.png": "Fig. 1 — tumour and tumour-free slices per split part, both protocols",
    "fig2_dice_params.png": "Fig. 2 — Dice against parameters (log scale); hollow markers: the paper's numbers",
    "fig3_samples.png": "Fig. 3 — the same test slices segmented by every model",
}


#: the note under the runs table when a run's config.json names another checkpoint than its summary
CHECKPOINT_MISMATCH = ("`(config.json: …)`: the run's `config.json` names another checkpoint than the one its "
                       "`summary.json` was computed from (it was trained with that setting and evaluated on the "
                       "other); the numbers are those of the checkpoint named first.")

#: the legend of the ✗ mark, shown when some run is marked in invalid.json
INVALID_LEGEND = ("; `✗`: the run's evaluation is known to be wrong (`invalid.json` says why, the "
                  "notes give the evidence); it is left out of Figs. 2 and 3 until it is redone.")


def slice_dice_note(rows: list[Row]) -> str:
    """The note on the patient split's two per-slice Dice columns."""
    counts = patient_slice_counts(rows)
    free = f" ({counts[0] - counts[1]} of the {counts[0]} test slices here)" if counts else ""
    tumour = f"the {counts[1]} slices with tumour" if counts else "the slices with tumour"
    missing = any(r.patient_run and r.patient_run.metric("dice_slice")
                  and not isinstance(r.patient_run.metric("dice_slice").get("tumour_mean"), (int, float))
                  for r in rows)
    return ("- **Per-slice Dice (all slices)** averages the Dice of every test slice, and a tumour-free "
            "slice predicted empty scores 1.0, so it is high when most slices are tumour-free" + free
            + f"; **tumour-slice Dice** (`dice_slice.tumour_mean` of `summary.json`) averages {tumour} "
            "only" + (f"; `{NOT_AVAILABLE}`: the summary does not hold it." if missing else "."))


def seed_section(rows: list[Row]) -> str:
    """The seed spread of dice_paper: per model, whether the paper's number lies within our seeds' range."""
    table = spread_rows(rows)
    out = ["## Seed spread of dice_paper", ""]
    if not table:
        return "\n".join(out + ["No paper-protocol run saved yet."])
    out += [
        markdown_table(SPREAD_HEADER, table), "",
        "- Each model's paper-protocol run of Table I is seed 0 (`paper/<model>/`); its reruns with "
        "`mambaseg train --seed s` are in `paper/<model>/seeds/<s>/` (`scripts/reproduce.py --seeds 0,1,2`, "
        "see `docs/reproduce.md`). **sd**: the sample standard deviation over the seeds; **range**: the "
        "lowest and highest seed.",
        f"- **Verdict**: `{WITHIN_RANGE}` when the paper's Dice lies within our seeds' range, `{REAL_GAP}` "
        f"when it lies outside; `{ONE_SEED}`: one seed cannot tell.",
        "- **Training minutes**: the epoch times of `metrics.jsonl` summed over the seeds (runs side by side "
        "on one GPU each count their own wall time).",
    ]
    return "\n".join(out)


def differences_section(rows: list[Row], notes: dict[str, str]) -> str:
    """Every row whose dice_paper differs from the paper's by more than TOLERANCE, with its notes."""
    out = [f"## Differences from the paper (|Δ dice_paper| > {TOLERANCE})", ""]
    flagged = [r for r in rows if r.differs]
    if not flagged:
        compared = sum(1 for r in rows if r.delta is not None)
        out.append(f"None: all {compared} compared rows are within {TOLERANCE} of the paper."
                   if compared else "No row can be compared yet (no paper-protocol summary).")
        return "\n".join(out)
    for r in flagged:
        out += [f"### `{r.model}`: ours {fmt_dice(r.dice_paper)}, paper {fmt_dice(r.published_dice)}"
                f" (Δ {fmt_delta(r.delta)})", ""]
        spread = r.spread
        seeds = len(spread.values)
        out += [f"**Seed spread:** {spread.verdict}" + (f" ({seeds} seeds, range {spread.range})" if seeds >= 2 else ""),
                ""]
        text = notes.get(r.model.lower())
        if text:
            out += [text, ""]
        else:
            out += [f"> {NO_EXPLANATION} Add a `## {r.model}` section with the evidence to "
                    "`results/notes.md` and rerun `mambaseg report`.", ""]
    return "\n".join(out).rstrip()


def commands_section(results_dir: Path, runs: dict[tuple[str, str], Run], log: dict | None,
                     data_given: bool) -> str:
    """How the runs were produced: scripts/reproduce.py invocations, per-run commands, the report."""
    out = ["## How these results were produced", "",
           "Every run was trained and evaluated by `scripts/reproduce.py` (see `docs/reproduce.md`), "
           "on the machine named in the tables above:", ""]
    invocations = (log or {}).get("invocations") or []
    if invocations:
        out.append("```sh")
        for inv in invocations:
            started = inv.get("started", "?")
            out.append(f"# {started} on {inv.get('host', '?')}: {inv.get('summary', '')}".rstrip(": "))
            out.append(inv.get("command") or " ".join(inv.get("argv", [])))
        out.append("```")
        unfinished = [j for j in invocations[-1].get("jobs", []) if j.get("status") not in ("done", "kept")]
        if unfinished:
            out += ["", "Runs the last invocation did not finish:", ""]
            out += [f"- {j.get('protocol')}/{j.get('model')}" + (f" seed {j['seed']}" if j.get("seed") else "")
                    + f": {j.get('status')}"
                    + (f" — {j['message']}" if j.get("message") else "") for j in unfinished]
    else:
        out += ["```sh", "PYTHONPATH=src python3 scripts/reproduce.py --data /root/lgg/kaggle_3m",
                "```", "", "(no `reproduce.json` here: the invocations were not recorded)"]
    per_run = [r for _, main in sorted(runs.items()) for r in main.seed_runs if r.commands]
    if per_run:
        out += ["", "<details><summary>Commands of each run</summary>", "", "```sh"]
        for run in per_run:
            out.append(f"# {run.protocol}/{run.model}" + (f" seed {run.seed}" if run.seed else ""))
            if run.commands.get("epochs_option"):
                out.append(f"# epochs overridden: --epochs {run.commands['epochs_option']}")
            for step in ("train", "evaluate"):
                cmds = run.commands.get(step) or []
                for cmd in [cmds] if isinstance(cmds, str) else cmds:
                    out.append(cmd)
        out += ["```", "", "</details>"]
    data_opt = " --data /root/lgg/kaggle_3m" if data_given else ""
    out += ["", "This README and the figures are regenerated from the files in this folder only by:", "",
            "```sh", f"PYTHONPATH=src python3 -m mambaseg report results{data_opt}", "```"]
    return "\n".join(out)


def render(results_dir: Path, out_dir: Path, rows: list[Row], runs: dict[tuple[str, str], Run],
           paper: PaperTable, notes: dict[str, str], figures: dict[str, Path | None],
           log: dict | None, data_given: bool, warnings: list[str]) -> str:
    """The whole README as Markdown."""
    ran = sum(1 for r in rows if r.any_run)
    any_invalid = any(run.invalid for run in runs.values())
    paper_epochs = f"{paper.epochs} epochs" if paper.epochs else "the paper's schedule"
    parts = [
        "# Results: reproduction of Table I",
        "",
        "_Generated by `mambaseg report` (mambaseg " + __version__ + ") from the saved `config.json`, "
        "`metrics.jsonl`, `summary.json` and `predictions.npz` of each run under `paper/` and `patient/`; "
        "do not edit by hand — explanations go in `notes.md`._",
        "",
        f"{ran} of {len(rows)} models have results. Paper numbers: `paper_table1.json` ({paper.source}).",
        "",
        *([notes["overview"], ""] if notes.get("overview") else []),
        "## Table I",
        "",
        markdown_table(HEADER, [r.cells() for r in rows]),
        "",
        "- **dice_paper**: the seed's Dice definition, on the test part of the *paper* split (slices drawn "
        "at random, so one patient's slices can be in train and test), evaluated on the last epoch's weights "
        f"as the paper did after {paper_epochs}. **Δ** = ours − paper.",
        "- **Per-slice / per-patient Dice, patient split**: the *leak-free* protocol (each patient in one "
        "part only), evaluated on the best-validation checkpoint; the interval is the 95 % interval "
        "from `summary.json`.",
        slice_dice_note(rows),
        "- **Epoch time** (median), **training time** (sum of epoch times) and **epochs** are those of the "
        "paper-protocol run, from `metrics.jsonl`; the machine is from its `config.json`. "
        "The paper's times are on 4× NVIDIA T4 (ulvm_unet_v4: 1× RTX 3060).",
        "- `not run`: no saved run; `—`: the run has no such value; `≠`: our parameter count differs "
        "from the paper's" + (INVALID_LEGEND if any_invalid else "."),
        "",
        seed_section(rows),
        "",
        differences_section(rows, notes),
        "",
        "## Training runs",
        "",
        markdown_table(RUNS_HEADER, runs_rows(runs, [r.model for r in rows])) if runs else "No run saved yet.",
        "",
        *([CHECKPOINT_MISMATCH, ""] if any(run.checkpoint_mismatch for run in runs.values()) else []),
        "## Figures",
        "",
    ]
    for name, caption in FIGURE_CAPTIONS.items():
        path = figures.get(name)
        if path is not None:
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            parts += [f"[{caption}]({rel})", "", f"![{caption}]({rel})", ""]
        else:
            parts += [f"- {caption}: **not drawn** (see notes below)", ""]
    if warnings:
        parts += ["Notes from the report:", ""] + [f"- {w}" for w in warnings] + [""]
    parts += [commands_section(results_dir, runs, log, data_given), ""]
    return "\n".join(parts)
