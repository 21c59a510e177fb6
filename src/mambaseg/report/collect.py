"""Find and read the saved runs of a results folder: ``<protocol>/<model>/`` with
config.json, metrics.jsonl, summary.json (and predictions.npz where the run kept it), and the
same model trained with other seeds in ``<protocol>/<model>/seeds/<seed>/``."""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mambaseg.errors import DataError

#: the two evaluation protocols, in report order
PROTOCOLS = ("paper", "patient")
#: keys under which config.json may name the machine (first found wins)
DEVICE_KEYS = ("device_name", "gpu_name", "device", "gpu", "machine")
#: keys of a metrics.jsonl record holding the epoch's wall time in seconds (first found wins)
EPOCH_TIME_KEYS = ("epoch_time_s", "epoch_time")
#: hand-written ``{"<protocol>/<model>": "why its evaluation is wrong"}``: such runs are marked
#: in the tables and left out of the figures until they are redone
INVALID_FILE = "invalid.json"
#: the folder of a run holding its reruns with other seeds: ``seeds/<seed>/`` (the run is seed 0)
SEEDS_DIR = "seeds"


def read_json(path: Path) -> Any:
    """Read a JSON file, raising DataError that names the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def read_jsonl(path: Path) -> list[dict]:
    """Read one JSON object per line; a broken *last* line (a run killed mid-write) is skipped."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if i == len(lines) - 1:
                print(f"warning: {path}: last line is not JSON, skipped", file=sys.stderr)
                continue
            raise DataError(f"{path}: line {i + 1} is not valid JSON ({exc})") from exc
    return rows


def metric(summary: dict | None, name: str) -> dict | None:
    """``summary[name]`` as a dict with at least ``mean`` (a bare number becomes {"mean": x})."""
    if not summary or summary.get(name) is None:
        return None
    value = summary[name]
    if isinstance(value, (int, float)):
        return {"mean": float(value)}
    if isinstance(value, dict) and value.get("mean") is not None:
        return value
    return None


#: the two HD95 definitions a summary.json may hold (the values of
#: ``mambaseg.metrics.HD95_DEFINITIONS``; docs/metrics.md, "HD95"), in table order
HD95_MAX, HD95_POOLED = "max_directed", "pooled"
#: how tables name each definition
HD95_LABELS = {HD95_MAX: "HD95 max of directed, MONAI", HD95_POOLED: "HD95 pooled, medpy"}


def hd95_metrics(summary: dict | None) -> dict[str, dict]:
    """The HD95 values of a summary by definition: ``{HD95_MAX: metric, HD95_POOLED: metric}``
    with the definitions it holds.

    A summary with ``hd95_pooled`` holds both (``hd95`` is then the max of the directed
    percentiles); one without it was written before the split, and its ``hd95`` is the pooled
    (medpy) value. A metric's own ``definition`` field, when present, wins.
    """
    out: dict[str, dict] = {}
    split = metric(summary, "hd95_pooled") is not None
    for key, default in (("hd95", HD95_MAX if split else HD95_POOLED), ("hd95_pooled", HD95_POOLED)):
        m = metric(summary, key)
        if m is not None:
            named = m.get("definition")
            out[named if named in HD95_LABELS else default] = m
    return out


@dataclass
class Run:
    """One saved run: ``results/<protocol>/<model>/``."""

    protocol: str
    model: str
    path: Path
    config: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    summary: dict | None = None
    commands: dict | None = None
    #: why this run's evaluation is known to be wrong (from invalid.json), else None
    invalid: str | None = None
    #: the training seed: 0 for ``<protocol>/<model>/``, s for its ``seeds/<s>/``
    seed: int = 0
    #: the runs of ``seeds/<s>/``, by seed (empty for those runs themselves)
    other_seeds: list["Run"] = field(default_factory=list)

    @property
    def seed_runs(self) -> list["Run"]:
        """This run and its reruns with other seeds, by seed."""
        return [self, *self.other_seeds]

    @property
    def has_predictions(self) -> bool:
        return (self.path / "predictions.npz").is_file()

    @property
    def epochs(self) -> list[dict]:
        """Per-epoch rows, one per epoch number (a resumed run's repeated epoch keeps the last)."""
        by_epoch: dict[Any, dict] = {}
        for i, row in enumerate(self.metrics):
            by_epoch[row.get("epoch", i)] = row
        return list(by_epoch.values())

    @property
    def epochs_run(self) -> int | None:
        return len(self.epochs) if self.metrics else None

    @property
    def epochs_planned(self) -> int | None:
        """config.json's epochs, unless reproduce.py's commands.json records an --epochs override
        (a resumed run keeps the config.json of its first start)."""
        for value in ((self.commands or {}).get("epochs_option"), (self.config or {}).get("epochs")):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value)
        return None

    def _epoch_times(self) -> list[float]:
        times = []
        for r in self.epochs:
            value = next((r[k] for k in EPOCH_TIME_KEYS if isinstance(r.get(k), (int, float))), None)
            if value is not None:
                times.append(float(value))
        return times

    @property
    def epoch_time_s(self) -> float | None:
        """Median seconds per epoch (robust to a slow first epoch)."""
        times = self._epoch_times()
        return statistics.median(times) if times else None

    @property
    def train_time_s(self) -> float | None:
        """Sum of the recorded epoch times."""
        times = self._epoch_times()
        return sum(times) if times else None

    @property
    def images_per_s(self) -> float | None:
        vals = [float(r["images_per_s"]) for r in self.epochs if isinstance(r.get("images_per_s"), (int, float))]
        return statistics.median(vals) if vals else None

    @property
    def best_val_dice(self) -> float | None:
        vals = [float(r["val_dice"]) for r in self.epochs if isinstance(r.get("val_dice"), (int, float))]
        return max(vals) if vals else None

    @property
    def device(self) -> str | None:
        """The machine named in config.json (e.g. 'NVIDIA H100 80GB HBM3'), with a GPU count if given."""
        cfg = self.config or {}
        names = []
        for key in DEVICE_KEYS:
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("name") or value.get("device_name")
            if isinstance(value, str) and value.strip():
                names.append(value.strip())
        generic = {"cuda", "cpu", "mps", "auto"}
        specific = [n for n in names if n.split(":")[0].lower() not in generic]
        name = (specific or names or [None])[0]
        count = cfg.get("world_size") or cfg.get("num_gpus") or cfg.get("gpus")
        if name and isinstance(count, int) and count > 1:
            name = f"{count}x {name}"
        return name

    @property
    def evaluated_checkpoint(self) -> str | None:
        """The checkpoint folder the summary was computed from (``last`` or ``best``)."""
        value = (self.summary or {}).get("checkpoint")
        return Path(str(value)).name if value else None

    @property
    def recorded_checkpoint(self) -> str | None:
        """The checkpoint config.json says the protocol evaluates: ``evaluation_checkpoint``
        (written at the end of training), else the ``checkpoint`` setting."""
        cfg = self.config or {}
        value = cfg.get("evaluation_checkpoint") or cfg.get("checkpoint")
        return value if isinstance(value, str) else None

    @property
    def checkpoint_mismatch(self) -> bool:
        """True when config.json names another checkpoint than the summary was computed from."""
        ev, rec = self.evaluated_checkpoint, self.recorded_checkpoint
        return ev in ("last", "best") and rec is not None and rec != ev

    @property
    def parameters(self) -> int | None:
        for src in (self.summary or {}, self.config or {}):
            value = src.get("parameters")
            if isinstance(value, (int, float)):
                return int(value)
        return None

    def metric(self, name: str) -> dict | None:
        return metric(self.summary, name)


def load_run(path: Path, protocol: str, model: str) -> Run | None:
    """Read one run folder; None when it holds none of the expected files."""
    run = Run(protocol=protocol, model=model, path=path)
    found = False
    if (path / "config.json").is_file():
        run.config, found = read_json(path / "config.json"), True
    if (path / "metrics.jsonl").is_file():
        run.metrics, found = read_jsonl(path / "metrics.jsonl"), True
    if (path / "summary.json").is_file():
        run.summary, found = read_json(path / "summary.json"), True
    if (path / "commands.json").is_file():
        run.commands = read_json(path / "commands.json")
    return run if found else None


def load_seed_runs(run: Run) -> list[Run]:
    """The runs of ``run.path/seeds/<s>/`` (s a number), by seed."""
    seeds_dir = run.path / SEEDS_DIR
    if not seeds_dir.is_dir():
        return []
    dirs = [p for p in seeds_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()]
    out = []
    for d in sorted(dirs, key=lambda p: int(p.name)):
        seed_run = load_run(d, run.protocol, run.model)
        if seed_run is not None:
            seed_run.seed = int(d.name)
            out.append(seed_run)
    return out


def load_invalid(root: Path) -> dict[str, str]:
    """``root/invalid.json``: {"<protocol>/<model>": reason}; {} when the file does not exist."""
    path = root / INVALID_FILE
    if not path.is_file():
        return {}
    doc = read_json(path)
    bad = (not isinstance(doc, dict) or not all(isinstance(v, str) and v.strip() for v in doc.values())
           or not all(k.count("/") == 1 and k.split("/")[0] in PROTOCOLS for k in doc))
    if bad:
        raise DataError(f"{path}: expected an object {{\"<protocol>/<model>\": \"reason\"}} with "
                        f"protocol one of {', '.join(PROTOCOLS)}")
    return dict(doc)


def load_runs(results_dir: str | Path) -> dict[tuple[str, str], Run]:
    """All runs under ``results_dir/<protocol>/<model>/``, keyed by (protocol, model), each with
    its reason from ``invalid.json`` when its evaluation is marked wrong there and its reruns
    with other seeds (``seeds/<s>/``) in ``other_seeds``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise DataError(f"results folder not found: {root}")
    invalid = load_invalid(root)
    runs: dict[tuple[str, str], Run] = {}
    for protocol in PROTOCOLS:
        pdir = root / protocol
        if not pdir.is_dir():
            continue
        for mdir in sorted(p for p in pdir.iterdir() if p.is_dir()):
            run = load_run(mdir, protocol, mdir.name)
            if run is not None:
                run.invalid = invalid.get(f"{protocol}/{mdir.name}")
                run.other_seeds = load_seed_runs(run)
                runs[(protocol, mdir.name)] = run
    return runs
