#!/usr/bin/env python3
"""Reproduce results/: the exact commands that trained, evaluated and reported every run.

Run on the GPU machine from the repository root (plain python3, no install needed)::

    PYTHONPATH=src python3 scripts/reproduce.py --data /root/lgg/kaggle_3m

Steps (each one skipped when its output already exists, so the script can be rerun to continue):

1. ``mambaseg data split`` writes ``results/splits/paper.json`` and ``results/splits/patient.json``
   (never rewritten once saved: a resumed run must see the same split).
2. ``mambaseg report results --data D`` saves ``results/data_stats.json`` and
   ``results/fig3_inputs.npz`` (Fig. 1 counts and Fig. 3's images) if either is missing.
3. For each protocol and model: ``mambaseg train ... --preset paper --out RUNS/<protocol>/<model>``
   (``--resume`` when a checkpoint exists; the patient protocol adds ``--eval-checkpoint best``, so
   that config.json records the checkpoint it evaluates), then ``mambaseg evaluate`` on ``last/``
   (paper protocol) or ``best/`` (patient protocol) with ``--save-predictions``, then copy
   config.json, metrics.jsonl, summary.json and predictions.npz into
   ``results/<protocol>/<model>/`` with a ``commands.json`` of the commands that made them.
4. ``mambaseg report results --data D`` regenerates results/README.md and the figures.

``--seeds 0,1,2`` trains each (protocol, model) once per seed: seed 0 is the run above; a seed
s > 0 adds ``--seed s`` and runs in ``RUNS/<protocol>/<model>.seed<s>``, its files going to
``results/<protocol>/<model>/seeds/<s>/``. ``--order gap`` takes the models in order of their
saved gap to the paper (largest first).

A failed step is logged and the other runs go on; the exit status is 1 if any step failed.
Checkpoints stay in the runs folder (default ``runs/``), never in results/.
Only the standard library is used here; the work is done by ``python3 -m mambaseg`` subprocesses.
See docs/reproduce.md for every option.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the paper's models (registry names) with their published parameter counts
PAPER_PARAMS = {
    "unet": 7_765_985, "resnet18": 13_930_497, "resnet50": 42_909_633, "segformer": 17_782_913,
    "umamba_bot": 9_813_700, "umamba_bot_pp": 10_076_356, "ulvm_unet": 49_457,
    "ulvm_unet_v1": 217_165, "ulvm_unet_v2": 42_737, "ulvm_unet_v3": 176_453,
    "ulvm_unet_v4": 1_135_309, "ulvm_unet_v5": 703_885, "ulvm_unet_v6": 769_677,
}
MODELS = tuple(PAPER_PARAMS)
PROTOCOLS = ("paper", "patient")
#: the checkpoint each protocol evaluates: the paper used the weights after its last epoch;
#: the leak-free protocol selects on the validation part
CHECKPOINT = {"paper": "last", "patient": "best"}
#: models at or above this many parameters run one at a time, even with --parallel
HEAVY_PARAMS = 5_000_000
#: how --order sorts the (protocol, model) runs: as given, or by |ours - paper| of the saved
#: seed-0 dice_paper, largest first (models without both numbers last, in the given order)
ORDERS = ("given", "gap")
#: files copied from a run into results/<protocol>/<model>/ (source folder key, name)
RUN_FILES = ("config.json", "metrics.jsonl")
EVAL_FILES = ("summary.json", "predictions.npz")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train, evaluate and report every model of the paper's Table I into results/.",
        epilog="example:\n  PYTHONPATH=src python3 scripts/reproduce.py --data /root/lgg/kaggle_3m "
               "--models ulvm_unet,ulvm_unet_v2 --protocols patient --parallel 2 --time-budget 3600",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/root/lgg/kaggle_3m", help="dataset folder (default %(default)s)")
    p.add_argument("--models", default="all",
                   help="comma-separated registry names, or 'all' (default: the 13 models of Table I)")
    p.add_argument("--protocols", default="paper,patient", help="comma-separated: paper, patient (default both)")
    p.add_argument("--only", default="", metavar="RUNS",
                   help="exactly these runs, in this order: comma-separated PROTOCOL/MODEL "
                        "(e.g. paper/ulvm_unet_v4,patient/segformer); replaces --models and "
                        "--protocols")
    p.add_argument("--seeds", default="0", metavar="S,S",
                   help="train each run once per seed: 0 is the main run (RUNS/P/M, results/P/M/), "
                        "s > 0 adds --seed s (RUNS/P/M.seed<s>, results/P/M/seeds/<s>/) (default 0)")
    p.add_argument("--order", choices=ORDERS, default="given",
                   help="gap: the models with the largest |dice_paper - paper| of their saved seed-0 "
                        "result first, those without one last (default: as given)")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the preset's epochs (recorded in commands.json and the README)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="launch no new training after this many seconds; rerun later to continue "
                        "(runs resume from their last checkpoint)")
    p.add_argument("--stop-running", action="store_true",
                   help="with --time-budget: also interrupt trainings still running at the deadline "
                        "(SIGINT, then SIGKILL after 60 s); they resume on the next run")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run up to N trainings at once on each GPU as separate processes; models "
                        f"with >= {HEAVY_PARAMS:,} parameters still run one at a time per GPU (default 1)")
    p.add_argument("--gpus", default="", metavar="N|LIST",
                   help="spread the runs over GPUs: a count (4: GPUs 0-3) or device numbers "
                        "(0,2); each run sees its GPU as CUDA_VISIBLE_DEVICES (default: no "
                        "assignment, every run sees what this process sees)")
    p.add_argument("--runs-dir", default=str(REPO / "runs"), help="checkpoints and logs (default runs/)")
    p.add_argument("--results-dir", default=str(REPO / "results"), help="results folder (default results/)")
    p.add_argument("--train-args", default="", help="extra arguments for every 'mambaseg train', quoted")
    p.add_argument("--eval-args", default="", help="extra arguments for every 'mambaseg evaluate', quoted")
    p.add_argument("--force", action="store_true",
                   help="redo runs already in results/ (their run folders are renamed *.old-<time>)")
    p.add_argument("--no-report", action="store_true", help="skip the final 'mambaseg report'")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the splits, data_stats.json and fig3_inputs.npz (no GPU needed)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only; run and write nothing")
    args = p.parse_args(argv)
    args.model_list = list(MODELS) if args.models in ("all", "") else [m.strip() for m in args.models.split(",") if m.strip()]
    args.protocol_list = [x.strip() for x in args.protocols.split(",") if x.strip()]
    bad = [x for x in args.protocol_list if x not in PROTOCOLS]
    if bad:
        p.error(f"--protocols: unknown {', '.join(bad)} (choose from {', '.join(PROTOCOLS)})")
    args.only_list = []
    for item in (x.strip() for x in args.only.split(",") if x.strip()):
        protocol, _, model = item.partition("/")
        if protocol not in PROTOCOLS or not model:
            p.error(f"--only: {item!r} is not PROTOCOL/MODEL with PROTOCOL one of {', '.join(PROTOCOLS)}")
        args.only_list.append((protocol, model))
    if args.only_list:  # the splits and reports need the protocols of these runs
        args.protocol_list = list(dict.fromkeys(pr for pr, _ in args.only_list))
        args.model_list = list(dict.fromkeys(m for _, m in args.only_list))
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    try:
        args.gpu_list = parse_gpus(args.gpus)
    except ValueError as exc:
        p.error(f"--gpus {args.gpus!r}: {exc}")
    try:
        args.seed_list = parse_seeds(args.seeds)
    except ValueError as exc:
        p.error(f"--seeds {args.seeds!r}: {exc}")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    args.runs = Path(args.runs_dir).absolute()
    args.results = Path(args.results_dir).absolute()
    args.data = str(Path(args.data).absolute())
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def parse_gpus(spec: str) -> list[str]:
    """``"4"`` -> ["0", "1", "2", "3"]; ``"0,2"`` -> ["0", "2"]; ``""`` -> [] (no assignment)."""
    spec = spec.strip()
    if not spec:
        return []
    if "," not in spec:
        n = int(spec)
        if n < 1:
            raise ValueError("a GPU count must be at least 1")
        return [str(i) for i in range(n)]
    ids = [x.strip() for x in spec.split(",") if x.strip()]
    if not all(x.isdigit() for x in ids) or len(set(ids)) != len(ids):
        raise ValueError("expected distinct device numbers, e.g. 0,1")
    return ids


def parse_seeds(spec: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; anything but distinct non-negative integers is a ValueError."""
    items = [x.strip() for x in spec.split(",")]
    if not all(x.isascii() and x.isdigit() for x in items) or len(set(map(int, items))) != len(items):
        raise ValueError("expected distinct non-negative integers, e.g. 0,1,2")
    return [int(x) for x in items]


def dice_mean(value) -> float | None:
    """A summary's metric (``{"mean": x}`` or a bare number) as a float, else None."""
    value = value.get("mean") if isinstance(value, dict) else value
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Log:
    """Timestamped lines to stdout and (unless dry-run) to RUNS/reproduce.log."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}"
        with self.lock:
            print(line, flush=True)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")


def mambaseg(*args: str) -> list[str]:
    """``python3 -m mambaseg ARGS`` with this interpreter."""
    return [sys.executable, "-m", "mambaseg", *args]


def show(cmd: list[str]) -> str:
    return shlex.join(cmd)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def epochs_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    epochs = set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            epochs.add(json.loads(line).get("epoch", i))
        except ValueError:
            pass
    return len(epochs)


@dataclass
class Job:
    """One (protocol, model, seed) run: train, evaluate, copy into results/."""

    protocol: str
    model: str
    run_dir: Path
    out_dir: Path
    status: str = "pending"
    message: str = ""
    train_cmd: list[str] | None = None
    eval_cmd: list[str] | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    #: the GPU (CUDA_VISIBLE_DEVICES) this job runs on, with --gpus
    gpu: str | None = None
    #: the training seed: 0 is the main run, passed to train (``--seed``) only when > 0
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.model}" + (f" seed {self.seed}" if self.seed else "")

    @property
    def heavy(self) -> bool:
        return PAPER_PARAMS.get(self.model, HEAVY_PARAMS) >= HEAVY_PARAMS


class Reproduce:
    """Plans and runs the steps; see the module docstring."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.start = time.monotonic()
        self.deadline = None if args.time_budget is None else self.start + args.time_budget
        self.log = Log(None if args.dry_run else args.runs / "reproduce.log")
        self.env = child_env()
        self.failed = 0
        self.stopping = False

    # -- planning -------------------------------------------------------------------------
    def split_file(self, protocol: str) -> Path:
        return self.args.results / "splits" / f"{protocol}.json"

    def split_cmd(self, protocol: str) -> list[str]:
        return mambaseg("data", "split", self.args.data, "--split", protocol, "-o", str(self.split_file(protocol)))

    def report_cmd(self, quiet: bool = False) -> list[str]:
        return mambaseg("report", str(self.args.results), "--data", self.args.data, *(["--quiet"] if quiet else []))

    def train_cmd(self, job: Job) -> list[str] | None:
        """The training command, or None when the run already has every epoch it needs."""
        cfg = read_json(job.run_dir / "config.json") or {}
        target = self.args.epochs or cfg.get("epochs")
        done = epochs_done(job.run_dir)
        if target and done >= int(target):
            return None
        cmd = mambaseg("train", "--model", job.model, "--data", self.args.data,
                       "--split", str(self.split_file(job.protocol)), "--preset", "paper")
        if CHECKPOINT[job.protocol] != "last":  # the paper preset's own choice is last/
            cmd += ["--eval-checkpoint", CHECKPOINT[job.protocol]]
        cmd += ["--out", str(job.run_dir), "--no-progress"]
        if job.seed:
            cmd += ["--seed", str(job.seed)]
        if self.args.epochs is not None:
            cmd += ["--epochs", str(self.args.epochs)]
        if (job.run_dir / "last" / "train_state.pt").is_file():
            cmd.append("--resume")
        elif any((job.run_dir / n).exists() for n in ("config.json", "metrics.jsonl", "last", "best")):
            cmd.append("--overwrite")  # a run that died before its first checkpoint: start again
        return cmd + shlex.split(self.args.train_args)

    def eval_cmd(self, job: Job) -> list[str]:
        summary = job.run_dir / "eval" / "summary.json"
        return mambaseg("evaluate", "--checkpoint", str(job.run_dir / CHECKPOINT[job.protocol]),
                        "--data", self.args.data, "--split", str(self.split_file(job.protocol)),
                        "--part", "test", "--out", str(summary), "--save-predictions", "--overwrite",
                        "--no-progress", *shlex.split(self.args.eval_args))

    def already_done(self, job: Job) -> bool:
        rec = read_json(job.out_dir / "commands.json") or {}
        return ((job.out_dir / "summary.json").is_file() and rec.get("status") == "done"
                and rec.get("epochs_option") == self.args.epochs)

    def job(self, protocol: str, model: str, seed: int) -> Job:
        """Seed 0 runs in RUNS/P/M into results/P/M/; seed s in RUNS/P/M.seed<s> into
        results/P/M/seeds/<s>/."""
        run_dir, out_dir = self.args.runs / protocol / model, self.args.results / protocol / model
        if seed:
            run_dir, out_dir = run_dir.with_name(f"{model}.seed{seed}"), out_dir / "seeds" / str(seed)
        return Job(protocol, model, run_dir, out_dir, seed=seed)

    def gaps(self) -> dict[str, float]:
        """model -> |ours - paper| of its saved seed-0 dice_paper, for the models with both."""
        table = read_json(self.args.results / "paper_table1.json") or {}
        out = {}
        for row in table.get("models", []):
            summary = read_json(self.args.results / "paper" / row["model"] / "summary.json") or {}
            ours, published = dice_mean(summary.get("dice_paper")), dice_mean(row.get("dice"))
            if ours is not None and published is not None:
                out[row["model"]] = abs(ours - published)
        return out

    def jobs(self) -> list[Job]:
        pairs = self.args.only_list or [(p, m) for p in self.args.protocol_list
                                         for m in self.args.model_list]
        if self.args.order == "gap":
            gaps = self.gaps()
            pairs = sorted(pairs, key=lambda pm: (pm[1] not in gaps, -gaps.get(pm[1], 0.0)))
            self.log("order by gap: " + ", ".join(f"{p}/{m} " + (f"{gaps[m]:.4f}" if m in gaps else "unknown")
                                                  for p, m in pairs))
        return [self.job(p, m, s) for p, m in pairs for s in self.args.seed_list]

    # -- running --------------------------------------------------------------------------
    def over_budget(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def run(self, cmd: list[str], log_file: Path | None, job: Job | None = None) -> int:
        """Run one command (output to ``log_file``); its return code (-1 if it could not start)."""
        env, prefix = self.env, ""
        if job is not None and job.gpu is not None:
            env = {**self.env, "CUDA_VISIBLE_DEVICES": job.gpu}
            prefix = f"CUDA_VISIBLE_DEVICES={job.gpu} "
        self.log(f"$ {prefix}{show(cmd)}")
        if self.args.dry_run:
            return 0
        try:
            if log_file is None:
                return subprocess.run(cmd, env=env, cwd=REPO).returncode
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(f"\n### {now()} $ {show(cmd)}\n")
                fh.flush()
                proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
                if job is not None:
                    job.procs.append(proc)
                try:
                    return proc.wait()
                finally:
                    if job is not None:
                        job.procs.remove(proc)
        except OSError as exc:
            self.log(f"cannot run {cmd[0]}: {exc}")
            return -1

    def prepare(self) -> None:
        """Splits, then the report's saved inputs (data_stats.json, fig3_inputs.npz)."""
        # the paper split is always saved: Fig. 3 shows its test slices
        for protocol in self.args.protocol_list + [p for p in ("paper",) if p not in self.args.protocol_list]:
            if self.split_file(protocol).is_file():
                self.log(f"split {protocol}: {self.split_file(protocol)} exists, kept")
                continue
            if not self.args.dry_run:
                self.split_file(protocol).parent.mkdir(parents=True, exist_ok=True)
            if self.run(self.split_cmd(protocol), None) != 0:
                self.failed += 1
                self.log(f"FAILED: split {protocol}")
        saved = [self.args.results / n for n in ("data_stats.json", "fig3_inputs.npz")]
        if self.args.dry_run or not all(p.is_file() for p in saved):
            if self.run(self.report_cmd(quiet=True), None) != 0:
                self.failed += 1
                self.log("FAILED: saving data_stats.json / fig3_inputs.npz (the final report retries)")

    def run_job(self, job: Job) -> Job:
        t0 = time.monotonic()
        log_dir = job.run_dir if not self.args.dry_run else None
        if not self.split_file(job.protocol).is_file() and not self.args.dry_run:
            job.status, job.message = "failed", f"no split file {self.split_file(job.protocol)}"
            return job
        job.train_cmd = self.train_cmd(job)
        if job.train_cmd is None:
            self.log(f"{job.name}: training complete ({epochs_done(job.run_dir)} epochs), not retrained")
        else:
            rc = self.run(job.train_cmd, log_dir and log_dir / "train.log", job)
            if self.stopping and rc != 0:
                job.status, job.message = "interrupted", "stopped at the time budget; rerun to resume"
                return job
            if rc != 0:
                job.status, job.message = "failed", f"train exited with {rc}; see {job.run_dir / 'train.log'}"
                return job
        train_s = time.monotonic() - t0
        job.eval_cmd = self.eval_cmd(job)
        ckpt = job.run_dir / CHECKPOINT[job.protocol]
        if not self.args.dry_run and not ckpt.is_dir():
            job.status, job.message = "failed", f"no checkpoint {ckpt} to evaluate"
            return job
        rc = self.run(job.eval_cmd, log_dir and log_dir / "evaluate.log", job)
        if rc != 0:
            job.status, job.message = "failed", f"evaluate exited with {rc}; see {job.run_dir / 'evaluate.log'}"
            return job
        self.collect(job, train_s, time.monotonic() - t0 - train_s)
        job.status = "planned (dry run)" if self.args.dry_run else "done"
        return job

    def collect(self, job: Job, train_s: float, eval_s: float) -> None:
        """Copy the run's small files into results/<protocol>/<model>/ and record the commands."""
        sources = [(job.run_dir / n, job.out_dir / n) for n in RUN_FILES]
        eval_dir = job.run_dir / "eval"
        sources += [(eval_dir / n, job.out_dir / n) for n in EVAL_FILES]
        for src, dst in sources:
            self.log(f"copy {src} -> {dst}")
            if not self.args.dry_run:
                if not src.is_file():
                    raise FileNotFoundError(f"{src} missing after a successful run")
                copy_atomic(src, dst)
        if self.args.dry_run:
            return
        old = read_json(job.out_dir / "commands.json") or {}
        history = list(old.get("train") or [])
        if job.train_cmd is not None:
            history.append(show(job.train_cmd))
        write_json_atomic(job.out_dir / "commands.json", {
            "protocol": job.protocol, "model": job.model, "seed": job.seed, "status": "done", "finished": now(),
            "epochs_option": self.args.epochs, "checkpoint": CHECKPOINT[job.protocol],
            "train": history, "evaluate": show(job.eval_cmd),
            "train_seconds_this_invocation": round(train_s, 1), "evaluate_seconds": round(eval_s, 1),
        })

    def schedule(self, jobs: list[Job]) -> None:
        """Run jobs, up to --parallel at once on each GPU of --gpus (or in all, without it), at
        most one heavy model at a time per GPU."""
        slots: list[str | None] = list(self.args.gpu_list) or [None]
        pending = list(jobs)
        running: dict[Future, Job] = {}

        def free_slot(job: Job) -> str | None | bool:
            """A GPU with room for ``job`` (None: no assignment), or False if none has room."""
            for slot in slots:
                here = [j for j in running.values() if j.gpu == slot]
                if len(here) < self.args.parallel and not (job.heavy and any(j.heavy for j in here)):
                    return slot
            return False

        with ThreadPoolExecutor(max_workers=self.args.parallel * len(slots)) as pool:
            while pending or running:
                if pending and self.over_budget():
                    for job in pending:
                        job.status, job.message = "skipped", "time budget spent; rerun to continue"
                        self.log(f"{job.name}: not started (time budget spent)")
                    pending = []
                while pending:
                    choice = next(((j, s) for j in pending if (s := free_slot(j)) is not False), None)
                    if choice is None:
                        break
                    job, job.gpu = choice
                    pending.remove(job)
                    self.log(f"{job.name}: start" + (f" on GPU {job.gpu}" if job.gpu is not None else ""))
                    running[pool.submit(self.safe_job, job)] = job
                if not running:
                    break
                done, _ = wait(running, timeout=15, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    self.log(f"{job.name}: {job.status}" + (f" ({job.message})" if job.message else ""))
                if self.args.stop_running and self.over_budget() and running and not self.stopping:
                    self.stop([j for j in running.values()])

    def safe_job(self, job: Job) -> Job:
        try:
            return self.run_job(job)
        except Exception as exc:  # noqa: BLE001 - one broken run must not stop the others
            job.status, job.message = "failed", f"{type(exc).__name__}: {exc}"
            return job

    def stop(self, jobs: list[Job]) -> None:
        """Interrupt running trainings at the deadline (SIGINT, then SIGKILL after 60 s)."""
        self.stopping = True
        self.log("time budget spent: interrupting running trainings (they resume on the next run)")
        procs = [p for j in jobs for p in list(j.procs)]
        for p in procs:
            p.send_signal(signal.SIGINT)

        def kill_later():
            time.sleep(60)
            for p in procs:
                if p.poll() is None:
                    p.kill()

        threading.Thread(target=kill_later, daemon=True).start()

    def main(self) -> int:
        a = self.args
        started = now()
        self.log(f"reproduce: models {','.join(a.model_list)}; protocols {','.join(a.protocol_list)}; "
                 f"data {a.data}; runs {a.runs}; results {a.results}"
                 + (f"; seeds {a.seeds}" if a.seed_list != [0] else "")
                 + (f"; epochs {a.epochs}" if a.epochs else "") + (" (dry run)" if a.dry_run else ""))
        if not a.dry_run and not Path(a.data).exists():
            self.log(f"error: --data {a.data} does not exist")
            return 2
        self.prepare()
        if a.prepare_only:
            self.log("prepared" + (f" with {self.failed} failure(s)" if self.failed else ""))
            return 1 if self.failed else 0
        jobs = self.jobs()
        todo = []
        for job in jobs:
            if self.already_done(job) and not a.force:
                job.status, job.message = "kept", "already in results/ (--force to redo)"
                self.log(f"{job.name}: already in results/, kept")
                continue
            if a.force and job.run_dir.exists() and not a.dry_run:
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                job.run_dir.rename(job.run_dir.with_name(f"{job.run_dir.name}.old-{stamp}"))
            todo.append(job)
        if a.dry_run:
            for i, job in enumerate(todo):
                job.gpu = a.gpu_list[i % len(a.gpu_list)] if a.gpu_list else None
                self.run_job(job)
        else:
            self.schedule(todo)
        self.failed += sum(1 for j in jobs if j.status == "failed")
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if not a.dry_run:
            self.record(started, summary, jobs)  # before the report, which lists it
        if not a.no_report:
            if self.run(self.report_cmd(), None) != 0:
                self.failed += 1
                self.log("FAILED: mambaseg report")
        self.log(f"finished: {summary}" + (f"; {self.failed} failure(s)" if self.failed else ""))
        for j in jobs:
            if j.status == "failed":
                self.log(f"  failed {j.name}: {j.message}")
        return 1 if self.failed else 0

    def record(self, started: str, summary: str, jobs: list[Job]) -> None:
        """Append this invocation to results/reproduce.json (read by the report)."""
        path = self.args.results / "reproduce.json"
        doc = read_json(path) or {"invocations": []}
        argv = self.args.argv
        doc["invocations"].append({
            "command": "PYTHONPATH=src python3 scripts/reproduce.py " + shlex.join(argv),
            "argv": argv, "started": started, "finished": now(), "host": platform.node(),
            "summary": summary,
            "jobs": [{"protocol": j.protocol, "model": j.model, "seed": j.seed, "status": j.status,
                      "message": j.message}
                     for j in jobs],
        })
        write_json_atomic(path, doc)


def main(argv: list[str] | None = None) -> int:
    return Reproduce(parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
