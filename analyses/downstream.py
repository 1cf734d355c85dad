"""Downstream validation: do the recommended mixtures give better encoders for segmentation and classification?

    .venv/bin/python analyses/downstream.py [--records out/closed-loop/records] [--config data/configs/finetune.toml]
                                            [--out out/downstream] [--targets ct_abdomen,mri_t2_abdomen]
                                            [--tasks segmentation,classification] [--workers 2] [--smoke] [--force]

Issue 8, part 3. The encoders are the closed loop's (``analyses/closed_loop.py``): MAEs pretrained
with the recommended, the data-proportional and the uniform allocation at the same budget,
checkpoints ``RECORDS/<strategy>-s<seed>.pt`` (``--groups``; at least ``--min-seeds`` seeds each).
Every encoder, and a from-scratch encoder as the floor, is fine-tuned with the fixed recipe of
``--config`` (:mod:`trainers.finetune`; fresh labelled phantom subjects that no pretraining run
saw) on every target domain and task:

* encoder ``<strategy>-s<k>`` is fine-tuned once, with fine-tuning seed ``k``; ``scratch`` with
  every seed ``k`` of the encoders. The seed fixes the decoder/head initialisation and the batches,
  the same for every encoder (common random numbers), so at one seed the strategies differ only in
  the encoder's weights, and the spread over seeds includes both pretraining and fine-tuning noise;
* segmentation: mean Dice over the config's structures (and Dice per structure) on the fixed test
  split; classification: AUROC of the per-subject lesion label on its fixed test split.

Prints a table (mean ± sd over seeds per strategy × target × task, and the mean paired difference
from scratch and from proportional), and writes ``OUT/results.json``, ``OUT/results.md`` and
``OUT/downstream.png``. Each fine-tune's result is its own JSON file under ``OUT/runs/`` (written
atomically); a rerun skips those whose recipe, encoder file (sha256) and seed are unchanged, so an
interrupted study resumes. ``--force`` redoes them.

``--smoke`` is a plumbing check, not a result: 3 steps per fine-tune, 8/4 segmentation and 6/6
classification subjects, ``--min-seeds 2``, into ``out/downstream-smoke``; without ``--records`` it
first trains two tiny encoders per strategy (12 MAE steps each on a few pretraining phantoms) into
``OUT/smoke-records``.

Time (one thread per fine-tune, this 2-core CPU, ``--workers 2``, a NUTS benchmark beside it for
part of the time): one segmentation fine-tune 130-225 s (600 steps and a sliding-window test of 24
volumes), one classification fine-tune 8-20 s. The study of recipe 2's closed loop (5 seeds,
``--groups recommended,proportional``: 2 targets x 2 tasks x (10 encoders + 5 scratch) = 60
fine-tunes) took 47 min; the default three groups make 80 fine-tunes, about an hour.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bayescale._files import shown_path  # noqa: E402
from bayescale.errors import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "data" / "configs" / "finetune.toml"
DEFAULT_RECORDS = REPO / "out" / "closed-loop" / "records"
DEFAULT_OUT = REPO / "out" / "downstream"
SMOKE_OUT = REPO / "out" / "downstream-smoke"
GROUPS = ("recommended", "proportional", "uniform")
TASKS = ("segmentation", "classification")
RESULTS_FORMAT = "bayescale.downstream.results/1"
METRIC = {"segmentation": "mean_dice", "classification": "auroc"}
METRIC_LABEL = {"segmentation": "mean Dice", "classification": "AUROC"}


# ---------------------------------------------------------------------------
# the plan


def smoke_config(config):
    """The config with a tiny recipe (plumbing only)."""
    seg = replace(config.segmentation, steps=3, train_subjects=8, test_subjects=4, batch_size=1)
    cls = replace(config.classification, steps=3, train_subjects=6, test_subjects=6, batch_size=2)
    return replace(config, segmentation=seg, classification=cls)


def load_study_config(path: Path, smoke: bool):
    from trainers.finetune import load_finetune_config

    config = load_finetune_config(path)
    return smoke_config(config) if smoke else config


def find_encoders(records: Path, groups, min_seeds: int) -> dict[str, dict[int, Path]]:
    """``{group: {seed: checkpoint}}`` from ``records/<group>-s<seed>.pt``."""
    if not records.is_dir():
        raise InputError(f"--records {records}: no such folder (the closed loop writes its checkpoints to out/closed-loop/records)")
    found: dict[str, dict[int, Path]] = {g: {} for g in groups}
    for path in sorted(records.glob("*.pt")):
        for g in groups:
            m = re.fullmatch(rf"{re.escape(g)}-s(\d+)\.pt", path.name)
            if m:
                found[g][int(m.group(1))] = path
    for g, seeds in found.items():
        if len(seeds) < min_seeds:
            have = ", ".join(p.name for p in seeds.values()) or "none"
            raise InputError(f"--records {records}: {len(seeds)} checkpoints of {g!r} ({have}); the study needs "
                             f"at least {min_seeds} seeds per strategy ({g}-s0.pt, {g}-s1.pt, ...)")
    return found


def plan_jobs(encoders: dict[str, dict[int, Path]], targets, tasks, out: Path) -> list[dict]:
    seeds = sorted({s for by_seed in encoders.values() for s in by_seed})
    jobs = []
    for target in targets:
        for task in tasks:
            for group, by_seed in encoders.items():
                for seed, path in sorted(by_seed.items()):
                    jobs.append({"group": group, "encoder": str(path), "name": f"{group}-s{seed}", "seed": seed,
                                 "target": target, "task": task})
            for seed in seeds:
                jobs.append({"group": "scratch", "encoder": "scratch", "name": "scratch", "seed": seed,
                             "target": target, "task": task})
    for job in jobs:
        job["result"] = str(out / "runs" / job["target"] / job["task"] / f"{job['name']}-ft{job['seed']}.json")
    return jobs


def is_done(job: dict, recipe_hash: str, sha: str | None, split: tuple[list[str], list[str]]) -> bool:
    """Whether the job's result file is there and was made by the same recipe, encoder file, seed and subjects."""
    path = Path(job["result"])
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (saved.get("recipe_hash") == recipe_hash and saved.get("seed") == job["seed"]
            and saved.get("encoder", {}).get("sha256") == sha and saved.get("target") == job["target"]
            and (saved.get("train_subjects"), saved.get("test_subjects")) == split)


# ---------------------------------------------------------------------------
# one fine-tune (also in worker processes)


_WORKER_CACHE: dict = {}


def run_job(job: dict, config_path: str, smoke: bool) -> dict:
    """Fine-tune one encoder on one target and task; write its result file atomically."""
    from bayescale._files import write_text_atomic
    from trainers.finetune import finetune, load_encoder, prepare_task_data

    key = (config_path, smoke)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = {"config": load_study_config(Path(config_path), smoke), "data": {}}
    state = _WORKER_CACHE[key]
    config = state["config"]
    data_key = (job["target"], job["task"])
    if data_key not in state["data"]:
        state["data"][data_key] = prepare_task_data(config, job["target"], job["task"])
    encoder = load_encoder(job["encoder"], config)
    result = finetune(config, encoder, state["data"][data_key], job["seed"])
    result["study"] = {"group": job["group"], "name": job["name"], "smoke": smoke}
    write_text_atomic(job["result"], json.dumps(result, indent=1) + "\n")
    return {"job": job, "metric": result["metrics"][METRIC[job["task"]]], "seconds": result["seconds"]["total"]}


def _init_worker(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


# ---------------------------------------------------------------------------
# the summary


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "sd": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None}


def _paired(differences) -> dict:
    """:func:`_stats` of paired differences plus their mean's Student-t 90 % interval (``ci90``, None below
    2 pairs or with no spread): the study's power is that interval's half-width."""
    from scipy import stats

    finite = [x for x in differences if x is not None and math.isfinite(x)]
    out = {**_stats(finite), "ci90": None}
    if out["n"] > 1 and out["sd"]:
        ci = stats.ttest_1samp(finite, 0.0).confidence_interval(0.9)
        out["ci90"] = [float(ci.low), float(ci.high)]
    return out


def summarise(jobs: list[dict], groups) -> dict:
    results = {}
    for job in jobs:
        r = json.loads(Path(job["result"]).read_text())
        results.setdefault((job["target"], job["task"]), {}).setdefault(job["group"], {})[job["seed"]] = r
    rows = []
    strategies = [*groups, "scratch"]
    for (target, task), by_group in results.items():
        metric = METRIC[task]
        for group in strategies:
            runs = by_group.get(group, {})
            row = {"target": target, "task": task, "strategy": group, "metric": metric,
                   **_stats([r["metrics"][metric] for r in runs.values()]),
                   "seeds": sorted(runs), "values": [runs[s]["metrics"][metric] for s in sorted(runs)]}
            if task == "segmentation":
                names = list(next(iter(runs.values()))["metrics"]["dice"]) if runs else []
                row["dice"] = {n: _stats([r["metrics"]["dice"][n] for r in runs.values()]) for n in names}
            for base in ("scratch", "proportional"):
                if base == group or base not in by_group:
                    continue
                common = sorted(set(runs) & set(by_group[base]))
                diffs = [runs[s]["metrics"][metric] - by_group[base][s]["metrics"][metric] for s in common
                         if runs[s]["metrics"][metric] is not None and by_group[base][s]["metrics"][metric] is not None]
                row[f"minus_{base}"] = _paired(diffs)
                if task == "segmentation":  # per structure: a structure that one fine-tune misses swamps the mean
                    row[f"dice_minus_{base}"] = {
                        n: _paired([runs[s]["metrics"]["dice"][n] - by_group[base][s]["metrics"]["dice"][n] for s in common])
                        for n in row["dice"]}
            rows.append(row)
    return {"rows": rows}


def _fmt(stat: dict, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    mean = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    text = f"{mean} ± {stat['sd']:.3f}" if stat.get("sd") is not None else mean
    if stat.get("ci90") is not None:
        text += f" [{stat['ci90'][0]:+.3f}, {stat['ci90'][1]:+.3f}]"
    return text


def table_lines(summary: dict, markdown: bool) -> list[str]:
    head = ["target", "task", "strategy", "metric", "mean ± sd", "n", "− scratch (paired)", "− proportional (paired)"]
    body = []
    for r in summary["rows"]:
        body.append([r["target"], r["task"], r["strategy"], METRIC_LABEL[r["task"]], _fmt(r),
                     str(r["n"]), _fmt(r.get("minus_scratch"), True), _fmt(r.get("minus_proportional"), True)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return lines + ["| " + " | ".join(row) + " |" for row in body]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head)] + [fmt.format(*row) for row in body]


def dice_lines(summary: dict) -> list[str]:
    rows = [r for r in summary["rows"] if r["task"] == "segmentation" and r.get("dice")]
    if not rows:
        return []
    names = list(rows[0]["dice"])
    lines = ["| target | strategy | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for r in rows:
        lines.append(f"| {r['target']} | {r['strategy']} | " + " | ".join(_fmt(r["dice"][n]) for n in names) + " |")
    return lines


def dice_difference_lines(summary: dict) -> list[str]:
    """Paired differences of each structure's Dice (against scratch and proportional), with their intervals."""
    rows = [r for r in summary["rows"] if r["task"] == "segmentation" and r.get("dice")]
    lines = []
    for base in ("scratch", "proportional"):
        have = [r for r in rows if r.get(f"dice_minus_{base}")]
        if not have:
            continue
        names = list(have[0]["dice"])
        lines += [f"| target | strategy − {base} | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
        for r in have:
            lines.append(f"| {r['target']} | {r['strategy']} | "
                         + " | ".join(_fmt(r[f"dice_minus_{base}"][n], True) for n in names) + " |")
        lines.append("")
    return lines


def figure(summary: dict, path: Path, groups) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayescale._files import atomic_path

    panels = sorted({(r["target"], r["task"]) for r in summary["rows"]}, key=lambda k: (TASKS.index(k[1]), k[0]))
    strategies = [*groups, "scratch"]
    colours = {"recommended": "tab:red", "proportional": "tab:blue", "uniform": "tab:green", "scratch": "0.45"}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (target, task) in zip(axes[0], panels):
        rows = {r["strategy"]: r for r in summary["rows"] if r["target"] == target and r["task"] == task}
        for i, s in enumerate(strategies):
            r = rows.get(s)
            if not r or r["mean"] is None:
                continue
            values = [v for v in r["values"] if v is not None]
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(i + np.asarray(jitter), values, s=14, color=colours.get(s, "k"), alpha=0.6, zorder=3)
            ax.errorbar(i + 0.25, r["mean"], yerr=r["sd"] or 0, fmt="o", color=colours.get(s, "k"), capsize=3, zorder=4)
        ax.set_xticks(range(len(strategies)), strategies, fontsize=8, rotation=20)
        ax.set_title(f"{target}\n{task}", fontsize=9)
        ax.set_ylabel(METRIC_LABEL[task], fontsize=8)
        if task == "classification":
            ax.axhline(0.5, color="0.7", lw=0.8, ls="--", zorder=1)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("fine-tuned encoders: seeds (dots) and mean ± sd", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------
# smoke encoders


def make_smoke_encoders(records: Path, groups, seeds=(0, 1), console=None) -> None:
    """Two tiny MAE encoders per strategy (12 steps on a few pretraining phantoms): plumbing only."""
    from trainers.config import load_config
    from trainers.design import RunSpec
    from trainers.domains import PreparedData, load_manifest, prepare_domain
    from trainers.run import ensure_phantoms, train_run

    pending = [(g, s) for g in groups for s in seeds if not (records / f"{g}-s{s}.pt").is_file()]
    if not pending:
        return
    config = load_config(REPO / "data" / "configs" / "phantom.toml")
    ensure_phantoms(config, console)
    manifest = load_manifest(config.data.manifest, config.data.validation_per_domain)
    mixes = {"recommended": {"ct_abdomen": 3, "mri_t2_abdomen": 1}, "proportional": {"ct_abdomen": 2, "mri_t2_abdomen": 2},
             "uniform": {"ct_abdomen": 1, "mri_t2_abdomen": 3}}
    domains = sorted({d for m in mixes.values() for d in m})
    data = PreparedData(domains={d: prepare_domain(manifest[d], config, str(manifest.path), config.data.cache_dir) for d in domains},
                        crop=tuple(config.data.crop))
    records.mkdir(parents=True, exist_ok=True)
    for g, s in pending:
        mix = mixes.get(g, {"ct_abdomen": 2, "mri_t2_abdomen": 2})
        spec = RunSpec(id=f"{g}-s{s}", data={d: mix.get(d, 0) for d in domains}, seed=s, split="holdout", kind="explicit", steps=12)
        train_run(spec, data, config, targets=domains, checkpoint=records / f"{g}-s{s}.pt")
        if console is not None:
            console.print(f"  smoke encoder {g}-s{s}.pt (12 MAE steps)", highlight=False)


# ---------------------------------------------------------------------------
# main


def run_study(args, console) -> dict:
    from trainers.finetune import ensure_downstream_phantoms, load_encoder, prepare_task_data

    out = args.out
    config_path = args.config.resolve()
    config = load_study_config(config_path, args.smoke)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    for t in tasks:
        if t not in TASKS:
            raise InputError(f"--tasks: {t!r} is not segmentation or classification")
    if not targets or not tasks or not groups:
        raise InputError("--targets, --tasks and --groups need at least one name each")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected at least 1")
    records = args.records
    if records is None:
        records = out / "smoke-records" if args.smoke else DEFAULT_RECORDS
        if args.smoke:
            console.print(f"[bold]smoke encoders[/] in {records}", highlight=False)
            make_smoke_encoders(records, groups, console=console)
    encoders = find_encoders(records, groups, args.min_seeds)

    # everything that can be wrong is found before the first fine-tune: encoders, labels, splits
    shas = {}
    for by_seed in encoders.values():
        for path in by_seed.values():
            shas[str(path)] = load_encoder(str(path), config).sha256
    ensure_downstream_phantoms(config, console)
    splits = {}
    for target in targets:
        for task in tasks:
            t0 = time.perf_counter()
            data = prepare_task_data(config, target, task)
            splits[target, task] = ([p.name for p in data.train_files], [p.name for p in data.test_files])
            console.print(f"  data {target}/{task}: {len(data.train)} fine-tuning, {len(data.test)} test subjects "
                          f"({time.perf_counter() - t0:.1f} s)", highlight=False)

    jobs = plan_jobs(encoders, targets, tasks, out)
    todo = [j for j in jobs if args.force or not is_done(j, config.recipe_hash(j["task"]), shas.get(j["encoder"]),
                                                         splits[j["target"], j["task"]])]
    console.print(f"[bold]fine-tune[/] {len(jobs)} runs ({len(jobs) - len(todo)} done before), "
                  f"{args.workers} worker{'s' if args.workers > 1 else ''}, results in {out / 'runs'}", highlight=False)
    _run_all(todo, config_path, args, console)

    summary = summarise(jobs, groups)
    summary.update({
        "format": RESULTS_FORMAT,
        "config": shown_path(config_path, REPO),
        "records": shown_path(records, REPO),
        "smoke": args.smoke,
        "targets": targets,
        "tasks": tasks,
        "recipes": {t: config.recipe_dict(t) for t in tasks},
        "encoders": {g: {str(s): shown_path(p, REPO) for s, p in by_seed.items()} for g, by_seed in encoders.items()},
        "runs": len(jobs),
    })
    return summary


def _run_all(todo: list[dict], config_path: Path, args, console) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not todo:
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not args.progress) as progress:
        bar = progress.add_task("fine-tuning", total=len(todo))

        def done(summary: dict) -> None:
            job = summary["job"]
            value = summary["metric"]
            shown = "-" if value is None else f"{value:.3f}"
            progress.console.print(f"  {job['target']}/{job['task']} {job['name']} seed {job['seed']}: "
                                   f"{METRIC_LABEL[job['task']]} {shown} ({summary['seconds']:.0f} s)", highlight=False)
            progress.advance(bar)

        if args.workers == 1:
            for job in todo:
                done(run_job(job, str(config_path), args.smoke))
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # jobs grouped by (target, task) so that a worker reuses its loaded data
        todo = sorted(todo, key=lambda j: (j["target"], j["task"]))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=context, initializer=_init_worker, initargs=(1,)) as pool:
            pending = {pool.submit(run_job, job, str(config_path), args.smoke) for job in todo}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        done(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def write_outputs(summary: dict, out: Path, groups) -> list[Path]:
    from bayescale._files import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / "results.json", out / "results.md", out / "downstream.png"
    write_text_atomic(json_path, json.dumps(summary, indent=2) + "\n")
    recipes = summary["recipes"]
    lines = [
        "# Downstream fine-tuning" + (" (smoke test: not a result)" if summary["smoke"] else ""),
        "",
        f"Encoders from `{summary['records']}`, recipe `{summary['config']}`; "
        f"mean ± sd over seeds; differences are paired by seed (same decoder initialisation and batches), "
        f"mean ± sd [Student-t 90 % interval of the mean difference].",
        "",
        *table_lines(summary, markdown=True),
        "",
    ]
    dice = dice_lines(summary)
    if dice:
        lines += ["Dice per structure (mean ± sd over seeds):", "", *dice, ""]
        lines += ["Paired differences of Dice per structure (mean ± sd [Student-t 90 % interval]; a fine-tune that "
                  "misses a structure, Dice 0, puts its seed's difference far out):", "", *dice_difference_lines(summary)]
    for task, r in recipes.items():
        lines.append(f"- {task}: {r['train_subjects']} fine-tuning / {r['test_subjects']} test subjects, {r['steps']} steps "
                     f"of {r['batch_size']}, AdamW lr {r['lr']:g}, crop {'x'.join(map(str, r['crop']))} at "
                     f"{'x'.join(f'{s:g}' for s in r['spacing'])} mm")
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    figure(summary, png_path, groups)
    return [json_path, md_path, png_path]


def main(argv=None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=None, help=f"checkpoints <group>-s<seed>.pt (default {DEFAULT_RECORDS.relative_to(REPO)})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--targets", default="ct_abdomen,mri_t2_abdomen")
    parser.add_argument("--tasks", default="segmentation,classification")
    parser.add_argument("--groups", default=",".join(GROUPS), help="checkpoint name prefixes (the strategies)")
    parser.add_argument("--min-seeds", type=int, default=None, help="seeds each strategy needs (default 3; 2 with --smoke)")
    parser.add_argument("--workers", type=int, default=1, help="fine-tunes in parallel (processes of one thread each)")
    parser.add_argument("--smoke", action="store_true", help="plumbing check: tiny recipe, tiny encoders")
    parser.add_argument("--force", action="store_true", help="redo fine-tunes whose result files exist")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    args.out = args.out or (SMOKE_OUT if args.smoke else DEFAULT_OUT)
    args.min_seeds = args.min_seeds if args.min_seeds is not None else (2 if args.smoke else 3)
    console = Console(soft_wrap=True)
    t0 = time.perf_counter()
    try:
        summary = run_study(args, console)
        groups = [g.strip() for g in args.groups.split(",") if g.strip()]
        for line in table_lines(summary, markdown=False):
            console.print(line, highlight=False)
        paths = write_outputs(summary, args.out, groups)
    except InputError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished fine-tunes keep their result files; the same command resumes", highlight=False)
        return 130
    console.print(f"wrote {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.0f} s)", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
