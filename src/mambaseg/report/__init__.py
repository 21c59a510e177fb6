"""Tables and figures from saved runs: ``mambaseg report RESULTS_DIR``.

A results folder holds ``<protocol>/<model>/`` (config.json, metrics.jsonl, summary.json, and
predictions.npz where the run kept it), ``splits/``, ``data_stats.json``, ``fig3_inputs.npz``,
``paper_table1.json`` and a hand-written ``notes.md``. :func:`make_report` turns them into
``README.md`` and ``figures/fig1_data.png``, ``fig2_dice_params.png``, ``fig3_samples.png``;
when ``cv/`` (the ``mambaseg crossval`` folders) exists, also ``cv/README.md``
(:func:`make_cv_report`).

Modules: ``collect`` (read runs), ``paper`` (published numbers), ``tables`` (rows and
formatting), ``notes`` (notes.md), ``datastats`` (Fig. 1 counts), ``samples`` (Fig. 3 inputs),
``figures`` (drawing), ``readme`` (Markdown), ``cv`` (the cross-validation README), ``build``
(putting it together). Saved predictions are read with ``mambaseg.inference.predictions``, and
every file is written atomically through ``mambaseg.files``.
"""
from mambaseg.report.build import ReportResult, make_report
from mambaseg.report.cv import make_cv_report

__all__ = ["ReportResult", "make_cv_report", "make_report"]
