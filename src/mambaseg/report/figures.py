"""The three figures: data per split part (Fig. 1), Dice against parameters (Fig. 2) and
sample segmentations (Fig. 3). Each function returns a matplotlib Figure (no pyplot state)."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mambaseg.inference.predictions import Predictions
from mambaseg.metrics import dice
from mambaseg.report.samples import Fig3Inputs
from mambaseg.report.tables import Row

FIG1 = "fig1_data.png"
FIG2 = "fig2_dice_params.png"
FIG3 = "fig3_samples.png"
PART_LABELS = {"train": "train", "val": "validation", "test": "test"}
PROTOCOL_TITLES = {"paper": "paper split (slices at random)", "patient": "patient split (leak-free)"}
TUMOUR, FREE = "#c0392b", "#95a5a6"


def model_colours(models: list[str]) -> dict[str, tuple]:
    """A fixed colour per model (tab20, in table order) shared by every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {m: cmap(i % 20) for i, m in enumerate(models)}


def fig1_data(stats: dict) -> Figure:
    """Stacked bars of tumour / tumour-free slices per split part, one panel per protocol."""
    protocols = [p for p in ("paper", "patient") if p in stats.get("protocols", {})]
    protocols += [p for p in stats.get("protocols", {}) if p not in protocols]
    fig = Figure(figsize=(5.0 * max(1, len(protocols)), 4.4), layout="constrained")
    axes = fig.subplots(1, max(1, len(protocols)), squeeze=False)[0]
    top = max((c["slices"] for p in protocols for c in stats["protocols"][p].values()), default=1)
    for ax, protocol in zip(axes, protocols):
        counts = stats["protocols"][protocol]
        parts = list(counts)
        x = np.arange(len(parts))
        tumour = np.array([counts[p]["tumour"] for p in parts])
        free = np.array([counts[p]["tumour_free"] for p in parts])
        ax.bar(x, tumour, color=TUMOUR, label="with tumour")
        ax.bar(x, free, bottom=tumour, color=FREE, label="tumour-free")
        for i, p in enumerate(parts):
            c = counts[p]
            ax.text(i, tumour[i] / 2, str(c["tumour"]), ha="center", va="center", color="white", fontsize=9)
            ax.text(i, tumour[i] + free[i] / 2, str(c["tumour_free"]), ha="center", va="center", fontsize=9)
            label = f"{c['slices']} slices\n{c['patients']} patient{'s' if c['patients'] != 1 else ''}"
            if c.get("patients_also_in_other_parts"):
                label += f"\n({c['patients_also_in_other_parts']} also in other parts)"
            ax.text(i, c["slices"] + top * 0.02, label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [PART_LABELS.get(p, p) for p in parts])
        ax.set_ylim(0, top * 1.3)
        ax.set_ylabel("slices")
        ax.set_title(PROTOCOL_TITLES.get(protocol, protocol), fontsize=10)
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.suptitle("Fig. 1  LGG slices per split part", fontsize=11)
    return fig


def _size(params: float, pmax: float) -> float:
    """Marker area grows with the square root of the parameter count."""
    return 20.0 + 480.0 * math.sqrt(max(params, 1.0) / max(pmax, 1.0))


def fig2_dice_params(rows: list[Row]) -> Figure:
    """Dice against parameters (log x), marker area by parameters.

    Left: paper protocol (dice_paper) with the paper's published numbers as hollow markers.
    Right: patient protocol (per-patient Dice with its 95 % interval), paper numbers for reference.
    """
    colours = model_colours([r.model for r in rows])
    pmax = max([r.parameters or 0 for r in rows] + [(r.paper.parameters or 0) for r in rows if r.paper] + [1])
    fig = Figure(figsize=(13.0, 5.6), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    panels = (
        (left, "paper protocol: dice_paper on the paper split's test part", "paper"),
        (right, "patient protocol: per-patient Dice, leak-free split (95 % CI)", "patient"),
    )
    ys: list[float] = []
    for ax, title, protocol in panels:
        for r in rows:
            c = colours[r.model]
            if r.paper and r.paper.parameters and r.paper.dice is not None:
                ax.scatter([r.paper.parameters], [r.paper.dice], s=_size(r.paper.parameters, pmax),
                           facecolors="none", edgecolors=[c], linewidths=1.4, zorder=2)
                ys.append(r.paper.dice)
            run = r.paper_run if protocol == "paper" else r.patient_run
            if run is not None and run.invalid:  # a wrong evaluation, to be redone: not drawn
                run = None
            m = None if run is None else run.metric("dice_paper" if protocol == "paper" else "dice_patient")
            params = r.parameters or (r.paper.parameters if r.paper else None)
            if m is None or not params:
                continue
            y = float(m["mean"])
            ys.append(y)
            ci = m.get("ci95")
            if protocol == "patient" and isinstance(ci, (list, tuple)) and len(ci) == 2:
                ax.errorbar([params], [y], yerr=[[y - ci[0]], [ci[1] - y]], fmt="none", ecolor=c,
                            elinewidth=1, capsize=3, zorder=2)
                ys.extend(ci)
            ax.scatter([params], [y], s=_size(params, pmax), color=[c], alpha=0.85,
                       edgecolors="black", linewidths=0.5, zorder=3)
            if protocol == "paper" and r.paper and r.paper.parameters and r.paper.dice is not None:
                ax.plot([r.paper.parameters, params], [r.paper.dice, y], color=c, lw=0.8, ls=":", zorder=1)
            ax.annotate(r.model, (params, y), xytext=(6, 4), textcoords="offset points", fontsize=7)
        for r in rows:  # name the paper markers of models we have no result for
            run = r.paper_run if protocol == "paper" else r.patient_run
            if (run is None or run.summary is None or run.invalid) and r.paper and r.paper.parameters and r.paper.dice is not None:
                ax.annotate(r.model, (r.paper.parameters, r.paper.dice), xytext=(6, -9),
                            textcoords="offset points", fontsize=7, color="0.45")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    left.set_ylabel("Dice")
    if ys:
        lo, hi = min(ys), max(ys)
        pad = max(0.02, (hi - lo) * 0.08)
        left.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    legend = [
        Line2D([], [], marker="o", ls="", markerfacecolor="0.5", markeredgecolor="black", markersize=8, label="ours"),
        Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="0.3", markersize=8,
               label="paper (published, slice split)"),
    ]
    left.legend(handles=legend, loc="lower right", fontsize=8)
    fig.suptitle("Fig. 2  Dice against model size (marker area grows with parameters)", fontsize=11)
    return fig


def fig3_samples(inputs: Fig3Inputs, predictions: dict[str, Predictions]) -> Figure:
    """Rows = slices; columns = image with ground truth, then each model's mask over the image."""
    models = list(predictions)
    k, ncols = len(inputs.rels), 1 + len(models)
    fig = Figure(figsize=(2.1 * ncols, 2.25 * max(k, 1) + 0.4), layout="constrained")
    axes = fig.subplots(max(k, 1), ncols, squeeze=False)
    for i, rel in enumerate(inputs.rels):
        image = None if inputs.images is None else inputs.images[i]
        gt = None if inputs.masks is None else inputs.masks[i]
        shape = (image.shape[:2] if image is not None else gt.shape if gt is not None
                 else next((p.shape[1:] for p in predictions.values()), (256, 256)))
        background = image if image is not None else np.zeros(shape, dtype=np.uint8)
        for j in range(ncols):
            ax = axes[i, j]
            ax.imshow(background, cmap="gray" if background.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                if gt is not None:
                    ax.imshow(np.ma.masked_where(gt == 0, gt), cmap="autumn", alpha=0.45, interpolation="nearest")
                    _outline(ax, gt)
                ax.set_ylabel(_short(rel), fontsize=7)
                if i == 0:
                    ax.set_title("image + ground truth" if gt is not None else "image", fontsize=8)
                continue
            model = models[j - 1]
            pred = predictions[model].get(rel)
            if i == 0:
                ax.set_title(model, fontsize=8)
            if pred is None:
                ax.text(0.5, 0.5, "not predicted", ha="center", va="center", transform=ax.transAxes,
                        color="white", fontsize=7)
                continue
            ax.imshow(np.ma.masked_where(pred == 0, pred), cmap="cool", alpha=0.55, interpolation="nearest")
            if gt is not None:
                _outline(ax, gt)
                ax.text(0.03, 0.04, f"Dice {dice(pred, gt):.2f}", transform=ax.transAxes, color="white",
                        fontsize=7, bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    title = "Fig. 3  The same test slices (paper split) segmented by each model"
    if inputs.masks is not None:
        title += ";" + ("\n" if ncols < 5 else " ") + "green outline: ground truth"
    if inputs.note:
        title += f"\n{inputs.note}"
    fig.suptitle(title, fontsize=10)
    return fig


def _outline(ax, mask: np.ndarray) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)


def _short(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0]
