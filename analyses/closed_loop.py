"""Closed loop: recommend an allocation on the phantom grid, train it for real, and check the prediction.

    .venv/bin/python analyses/closed_loop.py [--out out/closed-loop] [--budget 144] [--seeds 0,1,2,3,4]
                                             [--workers 2] [--device auto] [--plan-only] [--smoke]

The test that the whole system is right, not only self-consistent (issue 6, part 3):

1. **fit** the shipped phantom grid (``data/grids/phantom-mae.nc``) with the transfer law by NUTS,
   with the settings of ``data/configs/demo.toml`` (4 chains, 500 warm-up, 1000 draws, target
   accept 0.98); the posterior is saved as ``OUT/fit.nc`` and reused on a rerun;
2. **recommend** the allocation of a budget larger than any training run (default 144 volumes, the
   demo's; the grid's largest run has 48) with the demo's objective (``cvar:0.9``) and availability
   caps, rounded to whole volumes (``allocate(..., integer=True)``), and form the data-proportional
   and uniform allocations at the same budget under the same caps (``bayescale.optimise.baselines.fill``,
   then largest-remainder rounding that respects the caps);
3. **predict**, before any training, the validation loss of one new run of each allocation: per
   target and for the weighted mean of the targets (the quantity whose CVaR over the posterior the
   allocation minimises), median and central 50 % / 90 % intervals of the posterior predictive,
   with observation noise the way :mod:`bayescale.evaluate.check` adds it for held-out runs (each draw's
   noise at the run's total data, plus the typical relative ``loss_se`` of the grid's runs on that
   target where it is ``per_run``: the trainers' is ``shared``, the same crops for every run), and the
   improvement of the recommendation over proportional and uniform. The plan and these predictions
   are written to ``OUT/plan.json`` first (pre-registered) and reused on a rerun;
4. **train** every allocation with ``trainers`` — ``recommended-s0``, ``proportional-s0``,
   ``uniform-s0``, ... — through ``OUT/train.toml``: ``data/configs/phantom.toml`` with the same
   data, model and training sections (so the config hash is the shipped grid's recipe: 2000 + 100 x
   144 = 16,400 steps per run), ``[design]`` replaced by explicit runs (split ``holdout``: none is in
   the fit), ``save_checkpoints = true`` (``OUT/records/<run id>.pt``, the encoders a fine-tuning
   study reuses). ``trainers.run.train_grid`` skips finished runs, so an interrupted study loses at
   most the runs in flight; the runs are collected into ``OUT/runs.nc``, a loss grid that
   ``bayescale check OUT/fit.nc OUT/runs.nc`` also scores;
5. **compare** measured with predicted: per target and strategy, the predicted median and
   intervals next to the measured loss of every seed and the seed mean, how many measured values
   fall inside the 50 % / 90 % intervals, and the measured improvement of the recommendation over
   proportional and uniform (per seed, mean and spread) next to the predicted one. Writes
   ``OUT/results.json``, ``OUT/results.md`` and ``OUT/closed_loop.png`` (atomically) and prints
   the tables. If the recommendation does not beat a baseline, it says so.

The loss is the grid's ``loss``: masked-patch MSE on each domain's fixed validation crops; the
law is fitted to log ``loss`` directly, so its prediction is of the same number.

``--repredict RESULTS.json`` trains nothing: it refits today's model to that study's grid with its
fit settings and compares its predictions of the study's allocations with the study's measured losses
(``repredicted.json`` / ``.md`` beside RESULTS.json): how a changed model would have predicted a
finished study, after the fact, not pre-registered.

``--plan-only`` stops after step 3 (fit, plan, predictions, ``train.toml``). ``--smoke`` is a
plumbing check, not a result: 20 steps per run, budget 6 and a short NUTS fit (2 chains x 300),
into ``out/closed-loop-smoke`` unless ``--out`` says otherwise. ``--steps N`` alone fixes the steps
per run (it changes the config hash: such runs are not the shipped recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import tomllib
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bayescale._files import shown_path  # noqa: E402
from bayescale.errors import InputError  # noqa: E402
from bayescale.inference.sampling import ensure_host_devices  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "data" / "configs" / "demo.toml"
DEFAULT_TRAIN_CONFIG = REPO / "data" / "configs" / "phantom.toml"
DEFAULT_OUT = REPO / "out" / "closed-loop"
SMOKE_OUT = REPO / "out" / "closed-loop-smoke"
REPREDICT_OUT = REPO / "out" / "closed-loop-repredict"
STRATEGIES = ("recommended", "proportional", "uniform")
BASELINES = ("proportional", "uniform")
PLAN_FORMAT = "bayescale.closed_loop.plan/1"
RESULTS_FORMAT = "bayescale.closed_loop.results/1"
MEAN = "weighted mean"  # the row of the objective's loss: sum_j w_j L_j / sum_j w_j
PATH_KEYS = (("phantoms", "out"), ("data", "manifest"), ("data", "cache_dir"))
SMOKE = {"steps": 20, "budget": 6, "fit": {"chains": 2, "warmup": 300, "draws": 300}}


# ------------------------------------------------------------------------------------ allocations


def integer_rule(budget: int, caps: dict[str, float], rule: str) -> dict[str, int]:
    """The ``uniform`` or ``proportional`` (to the caps) split of ``budget`` whole volumes under ``caps``.

    The continuous split is :func:`bayescale.optimise.baselines.fill` (water-filling, what ``allocate``
    reports as the baseline); it is rounded by largest remainder without exceeding any cap, so the
    result spends exactly ``budget``.
    """
    from bayescale.optimise.baselines import fill

    if rule not in BASELINES:
        raise InputError(f"unknown mixing rule {rule!r}; expected one of {', '.join(BASELINES)}")
    names = list(caps)
    upper = np.floor(np.array([float(caps[n]) for n in names]) + 1e-9)
    if int(budget) != budget or budget < 1:
        raise InputError(f"budget {budget!r}: trainers need a whole number of volumes >= 1")
    if not np.all(np.isfinite(upper)) or np.any(upper < 0):
        raise InputError(f"caps {caps}: every domain needs a finite cap >= 0")
    if budget > upper.sum():
        raise InputError(f"budget {budget:g} is more than the caps allow ({upper.sum():g} volumes in all)")
    shape = np.ones(len(names)) if rule == "uniform" else upper
    continuous = fill(float(budget), np.zeros(len(names)), upper, shape)
    return dict(zip(names, round_capped(continuous, upper, int(budget))))


def round_capped(amounts, caps, budget: int) -> list[int]:
    """Whole numbers summing to ``budget``, each at most its cap, closest to ``amounts`` (largest remainder)."""
    amounts = np.asarray(amounts, dtype=float)
    caps = np.asarray(caps, dtype=float)
    counts = np.minimum(np.floor(amounts + 1e-9), caps)
    short = int(budget - counts.sum())
    order = np.argsort(-(amounts - counts), kind="stable")
    for i in order:
        if short <= 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            short -= 1
    if short != 0:
        raise InputError(f"cannot round {amounts.tolist()} to {budget} whole volumes under the caps {caps.tolist()}")
    return [int(c) for c in counts]


_STRATEGY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def plan_runs(allocations: dict[str, dict[str, int]], seeds) -> list[dict]:
    """One training run per (seed, strategy): ``{"id": "<strategy>-s<seed>", "strategy", "seed", "data"}``.

    Seed-major order, so an interrupted study has whole seeds (every strategy) first. Refuses
    amounts that are not whole volumes >= 0, an allocation without data, repeated seeds and
    strategy names that cannot be part of a run id.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError(f"--seeds {seeds}: give distinct integers >= 0")
    for name, amounts in allocations.items():
        if not _STRATEGY_RE.match(name):
            raise InputError(f"strategy name {name!r}: letters, digits and '_' only (it becomes part of run ids)")
        for domain, n in amounts.items():
            if isinstance(n, bool) or not float(n).is_integer() or n < 0:
                raise InputError(f"{name}: {domain} = {n!r}; trainers need whole volumes >= 0")
        if sum(amounts.values()) <= 0:
            raise InputError(f"{name}: the allocation has no data")
    return [
        {"id": f"{name}-s{seed}", "strategy": name, "seed": seed, "data": {d: int(n) for d, n in amounts.items()}}
        for seed in seeds
        for name, amounts in allocations.items()
    ]


# ------------------------------------------------------------------------------------ the trainers config


def relocated_config(base_path: Path, out_dir: Path) -> dict:
    """A trainers config TOML as a dict, its paths rewritten relative to ``out_dir`` (where the
    derived config will be written) and without its ``records`` (the derived config has its own)."""
    base_path = Path(base_path)
    with base_path.open("rb") as fh:
        raw = tomllib.load(fh)
    base_dir = base_path.resolve().parent
    out_dir = Path(out_dir).resolve()
    for section, key in PATH_KEYS:
        if section in raw and key in raw[section]:
            target = Path(raw[section][key]).expanduser()
            target = target if target.is_absolute() else (base_dir / target)
            raw[section][key] = os.path.relpath(os.path.normpath(target), out_dir)
    raw.pop("records", None)
    return raw


def train_config_text(base_path: Path, runs: list[dict], out_dir: Path, *, records: str = "records",
                      steps: int | None = None, device: str | None = None, description: str | None = None) -> str:
    """The trainers config of the closed-loop runs, as TOML text for ``out_dir/<file>``.

    Everything of ``base_path`` (phantoms, data, model, training) is kept, so the runs are trained
    with the recipe of the grid that config made (the same config hash, unless ``steps`` or
    ``device`` change it); its paths are rewritten relative to ``out_dir``; ``[design]`` becomes
    the explicit ``runs`` (split ``holdout``), records go to ``out_dir/records`` and every run
    also saves its weights (``save_checkpoints``).
    """
    base_path = Path(base_path)
    raw = relocated_config(base_path, out_dir)
    raw.pop("design", None)
    training = raw.setdefault("training", {})
    training["save_checkpoints"] = True
    if device is not None:
        training["device"] = device
    if steps is not None:
        for key in ("steps_per_volume", "base_steps", "min_steps", "max_steps"):
            training.pop(key, None)
        training["steps"] = int(steps)
    config = {
        "description": description or f"closed-loop runs; recipe of {base_path.name}: {raw.get('description', '')}".rstrip(": "),
        "records": records,
    }
    config.update({k: v for k, v in raw.items() if k != "description"})
    config["design"] = {
        "runs": [{"id": r["id"], "seed": int(r["seed"]), "split": "holdout", "data": dict(r["data"])} for r in runs]
    }
    head = (f"# Written by analyses/closed_loop.py from {os.path.relpath(base_path.resolve(), out_dir)}: the same\n"
            "# phantoms, data, model and training, with the closed-loop allocations as explicit runs.\n"
            "# Paths are relative to this file. Regenerated on every run of the script.\n")
    text = head + to_toml(config)
    if tomllib.loads(text) != config:  # the writer below is small; make sure it said what we meant
        raise AssertionError("closed_loop.to_toml did not round-trip the config")
    return text


def to_toml(table: dict) -> str:
    """A small TOML writer for configs: scalars, lists, tables, arrays of tables; a table nested in
    an array of tables (``data = {domain = volumes}`` of a run) is written inline."""
    lines: list[str] = []

    def emit(tab: dict, prefix: str, top: bool) -> None:
        def is_table(v):
            return isinstance(v, dict) and (top or any(isinstance(x, dict) or _is_table_array(x) for x in v.values()))

        for k, v in tab.items():
            if not is_table(v) and not _is_table_array(v):
                lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in tab.items():
            name = f"{prefix}{_key(k)}"
            if is_table(v):
                if any(not is_table(x) and not _is_table_array(x) for x in v.values()) or not v:
                    lines.extend(["", f"[{name}]"])
                emit(v, name + ".", False)
            elif _is_table_array(v):
                for item in v:
                    lines.extend(["", f"[[{name}]]"])
                    emit(item, name + ".", False)

    emit(table, "", True)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML config value {v} is not finite")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# ------------------------------------------------------------------------------------ predictions


def typical_relative_se(grid, targets) -> np.ndarray:
    """Per target: the median over the grid's runs of the fresh evaluation noise ``loss_se / loss``
    (:func:`bayescale.data.grid.relative_cell_noise`): 0 where the grid has none, and where its
    ``loss_se`` is ``shared`` (every run scored on the same validation crops: one offset per target
    that the law absorbs and every new run repeats, not noise between runs; the trainers' grids).

    A new run's measured loss carries that much evaluation noise; :mod:`bayescale.evaluate.check` widens the
    predictive of a held-out run by its own ``loss_se`` the same way (in log space).
    """
    from bayescale.data.grid import relative_cell_noise

    names = [str(x) for x in grid["target"].values]
    present = [t for t in targets if t in names]
    out = np.zeros(len(targets))
    if not present:
        return out
    ratio = relative_cell_noise(grid, present)
    observed = np.isfinite(grid["loss"].sel(target=present).transpose("run", "target").values)
    for k, t in enumerate(present):
        values = ratio[observed[:, k], k]
        out[targets.index(t)] = float(np.median(values)) if values.size else 0.0
    return out


def predict_allocations(draws, grid, allocations: dict, weights, settings: dict) -> dict:
    """:func:`predicted_table` of ``allocations`` with the evaluation noise of ``grid``'s fit runs,
    one new run per seed of ``settings["seeds"]``: what the plan pre-registers and ``--repredict`` redoes."""
    from bayescale.data.grid import select_split

    rel_se = typical_relative_se(select_split(grid, "fit"), list(draws.targets))
    return predicted_table(draws, allocations, weights=weights, relative_se=rel_se, n_seeds=len(settings["seeds"]),
                           seed=settings["seed"])


def _band(samples) -> dict:
    q = np.quantile(np.asarray(samples, dtype=float), [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"median": float(q[2]), "lo50": float(q[1]), "hi50": float(q[3]), "lo90": float(q[0]), "hi90": float(q[4])}


def predicted_table(draws, allocations: dict[str, dict[str, float]], *, weights=None, relative_se=None,
                    n_seeds: int = 3, seed: int = 0) -> dict:
    """Posterior predictions for the allocations, from the law's draws (``LawDraws``).

    Per strategy and target, and for the weighted mean of the targets (``MEAN``):

    - ``single_run``: the predictive of the loss one new run will measure (median, 50 % and 90 %
      intervals): each draw's law value with its observation noise (sigma; Student-t where the
      fit used it) and the evaluation noise ``relative_se`` (per target, in log space);
    - ``seed_mean``: the same for the mean of ``n_seeds`` independent runs;
    - ``law``: the credible interval of the expected loss (the law without noise).

    All three include the law's error past the fit runs' data where the posterior carries one
    (``slope_error``), as :func:`bayescale.evaluate.predict.predict` does: an allocation larger
    than the largest fit run is an extrapolation, and its curve is less certain than the law's
    parameters say.

    ``improvement[base]``: 1 - (weighted mean of the recommendation) / (that of ``base``) — > 0
    means the recommendation is better — for the law (``law``, with ``p_better``), for one pair of
    runs (``single_run``) and for the mean over ``n_seeds`` paired runs (``seed_mean``). The
    noise of different runs is drawn independently (as in the model), so the run-level intervals
    ignore that runs of one seed share their initial weights.
    """
    from bayescale.evaluate.predict import add_observation_noise, loss_draws, parse_allocation, with_extrapolation_error

    if n_seeds < 1:
        raise InputError(f"n_seeds must be >= 1, got {n_seeds}")
    names = list(allocations)
    targets = list(draws.targets)
    J = len(targets)
    if weights is None:
        w = np.ones(J)
    elif isinstance(weights, dict):
        w = np.array([float(weights.get(t, 1.0)) for t in targets])
    else:
        w = np.asarray(weights, dtype=float)
    if w.shape != (J,) or np.any(w < 0) or w.sum() <= 0:
        raise InputError(f"weights {weights!r}: one weight >= 0 per target, not all 0")
    rel = np.zeros(J) if relative_se is None else np.asarray(relative_se, dtype=float)
    X = np.array([parse_allocation(draws, allocations[n], parameter=f"allocation {n}") for n in names])  # (K, I)
    # The law with its error past the fit runs' data: a curve-level error, so the runs of one draw share it.
    plain = loss_draws(draws, X, log=True).astype(np.float64)  # (S, K, J)
    log_law = with_extrapolation_error(plain, draws, X)
    S, K, _ = log_law.shape
    rng = np.random.default_rng(seed)
    # With each run's amounts: its misfit sd at its total data, and the same error past the data as
    # log_law's (one per draw and target, so the runs of one draw share it).
    amounts = np.broadcast_to(X, (n_seeds,) + X.shape)
    noisy = add_observation_noise(np.broadcast_to(plain[:, None], (S, n_seeds, K, J)).copy(), draws, rng, amounts)
    noisy = noisy + rel * rng.standard_normal(noisy.shape)
    runs = np.exp(noisy)  # (S, n, K, J): the losses n new runs of each strategy would measure
    law = np.exp(log_law)  # (S, K, J)

    def wmean(x):
        return x @ w / w.sum()

    out = {
        "targets": targets,
        "weights": dict(zip(targets, w.tolist())),
        "relative_se": dict(zip(targets, rel.tolist())),
        "n_seeds": int(n_seeds),
        "draws": int(S),
        "strategies": {},
        "improvement": {},
    }
    for k, name in enumerate(names):
        entry = {"allocation": {s: float(x) for s, x in zip(draws.sources, X[k])}, "budget": float(X[k].sum()), "rows": {}}
        for j, t in enumerate(targets + [MEAN]):
            pick = (lambda a: a[..., k, j]) if t != MEAN else (lambda a: wmean(a[..., k, :]))
            single = pick(runs[:, 0])
            mean_n = pick(runs).mean(axis=1)
            law_k = pick(law)
            entry["rows"][t] = {"single_run": _band(single), "seed_mean": _band(mean_n), "law": _band(law_k)}
        out["strategies"][name] = entry
    if "recommended" in names:
        r = names.index("recommended")
        for base in names:
            if base == "recommended":
                continue
            b = names.index(base)
            imp_law = 1.0 - wmean(law[:, r]) / wmean(law[:, b])
            imp_runs = 1.0 - wmean(runs[:, :, r]) / wmean(runs[:, :, b])  # (S, n): one paired pair of runs each
            out["improvement"][base] = {
                "law": {**_band(imp_law), "p_better": float(np.mean(imp_law > 0))},
                "single_run": {**_band(imp_runs[:, 0]), "p_better": float(np.mean(imp_runs[:, 0] > 0))},
                "seed_mean": {**_band(imp_runs.mean(axis=1)), "p_better": float(np.mean(imp_runs.mean(axis=1) > 0))},
            }
    return out


# ------------------------------------------------------------------------------------ measured vs predicted


def measured_from_grid(grid, runs: list[dict]) -> dict:
    """``{strategy: {seed: {"loss": {target: v}, "loss_se": {...}}}}`` of the planned runs the grid holds.

    Refuses a grid run whose data differ from the plan (records of another plan).
    """
    have = {str(r): i for i, r in enumerate(grid["run"].values)}
    targets = [str(t) for t in grid["target"].values]
    sources = [str(s) for s in grid["source"].values]
    out: dict = {}
    for run in runs:
        i = have.get(run["id"])
        if i is None:
            continue
        data = {s: float(grid["data"].values[i, k]) for k, s in enumerate(sources)}
        planned = {s: float(run["data"].get(s, 0)) for s in sources}
        if data != planned:
            raise InputError(f"run {run['id']!r} in the measured grid trained on {data}, the plan says {planned}")
        loss = grid["loss"].values[i]
        se = grid["loss_se"].values[i] if "loss_se" in grid else np.full(len(targets), np.nan)
        out.setdefault(run["strategy"], {})[int(run["seed"])] = {
            "loss": {t: float(v) for t, v in zip(targets, loss)},
            "loss_se": {t: float(v) for t, v in zip(targets, se)},
        }
    return out


def _inside(value, band, level: int) -> bool:
    return bool(band[f"lo{level}"] <= value <= band[f"hi{level}"])


def compare(predicted: dict, measured: dict) -> dict:
    """Measured losses against the predictions of :func:`predicted_table` (pure; JSON-able).

    ``rows``: one per (strategy, target or ``MEAN``) with the predicted bands, the measured value of
    every seed, the seed mean, and whether each falls inside the 50 % / 90 % single-run interval.
    ``coverage``: over every measured (strategy, seed, target) cell — the per-domain losses — and
    separately over the weighted means. ``improvement[base]``: measured per-seed improvement of the
    recommendation (1 - weighted mean / that of ``base``, paired by seed), its mean, standard
    deviation and range, how many seeds it won, the predicted bands, and a plain ``verdict``.
    """
    targets = list(predicted["targets"])
    w = np.array([predicted["weights"][t] for t in targets])
    rows = []
    cov = {"targets": {"n": 0, "inside50": 0, "inside90": 0}, MEAN: {"n": 0, "inside50": 0, "inside90": 0}}
    weighted: dict[str, dict[int, float]] = {}
    for name, entry in predicted["strategies"].items():
        seeds = measured.get(name, {})
        for seed, m in seeds.items():
            values = np.array([m["loss"].get(t, np.nan) for t in targets])
            if np.all(np.isfinite(values)):
                weighted.setdefault(name, {})[int(seed)] = float(values @ w / w.sum())
        for t in targets + [MEAN]:
            band = entry["rows"][t]["single_run"]
            per_seed = {}
            for seed, m in sorted(seeds.items()):
                v = weighted.get(name, {}).get(int(seed)) if t == MEAN else m["loss"].get(t)
                if v is not None and math.isfinite(v):
                    per_seed[int(seed)] = float(v)
            inside50 = {s: _inside(v, band, 50) for s, v in per_seed.items()}
            inside90 = {s: _inside(v, band, 90) for s, v in per_seed.items()}
            key = MEAN if t == MEAN else "targets"
            cov[key]["n"] += len(per_seed)
            cov[key]["inside50"] += sum(inside50.values())
            cov[key]["inside90"] += sum(inside90.values())
            mean = float(np.mean(list(per_seed.values()))) if per_seed else None
            rows.append({
                "strategy": name, "target": t, "predicted": entry["rows"][t],
                "measured": per_seed, "seed_mean": mean,
                "inside50": inside50, "inside90": inside90,
                "seed_mean_inside90": None if mean is None else _inside(mean, entry["rows"][t]["seed_mean"], 90),
            })
    for key in cov:
        n = cov[key]["n"]
        cov[key]["coverage50"] = cov[key]["inside50"] / n if n else None
        cov[key]["coverage90"] = cov[key]["inside90"] / n if n else None

    improvement = {}
    rec = weighted.get("recommended", {})
    for base, pred in predicted["improvement"].items():
        other = weighted.get(base, {})
        paired = sorted(set(rec) & set(other))
        per_seed = {s: 1.0 - rec[s] / other[s] for s in paired}
        values = np.array(list(per_seed.values()))
        entry = {
            "per_seed": per_seed,
            "n": len(paired),
            "mean": float(values.mean()) if values.size else None,
            "sd": float(values.std(ddof=1)) if values.size > 1 else None,
            "min": float(values.min()) if values.size else None,
            "max": float(values.max()) if values.size else None,
            "seeds_better": int(np.sum(values > 0)),
            "ci90": paired_interval(values, 0.9),
            "absolute": {s: other[s] - rec[s] for s in paired},
            "predicted": pred,
            "per_seed_inside90": {s: _inside(v, pred["single_run"], 90) for s, v in per_seed.items()},
            "mean_inside90": None if not values.size else _inside(float(values.mean()), pred["seed_mean"], 90),
        }
        entry["verdict"] = verdict(base, entry)
        improvement[base] = entry
    return {"rows": rows, "coverage": cov, "weighted_mean": weighted, "improvement": improvement}


def paired_interval(differences, level: float = 0.9) -> list[float] | None:
    """Student-t interval of the mean of paired differences (one per seed); None below 2 pairs.

    The pairs share their seed's initial weights and validation crops, so the differences, not
    the two arms' spreads, say how well the seeds resolve the gain.
    """
    from scipy import stats

    values = np.asarray(differences, dtype=float)
    if values.size < 2:
        return None
    if np.all(values == values[0]):
        return [float(values[0])] * 2
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(level)
    return [float(ci.low), float(ci.high)]


def verdict(base: str, imp: dict) -> str:
    """One plain sentence: did the recommendation beat ``base`` in the measurement, and as predicted?"""
    if not imp["n"]:
        return f"vs {base}: not measured yet"
    pct = 100 * imp["mean"]
    spread = "" if imp["sd"] is None else f" ± {100 * imp['sd']:.1f}% (sd over seeds)"
    ci = imp.get("ci90")
    if ci is not None:
        spread += f", paired 90% interval {100 * ci[0]:+.1f}% .. {100 * ci[1]:+.1f}%"
    won = f"{imp['seeds_better']} of {imp['n']} seeds"
    pred = imp["predicted"]["seed_mean"]
    predicted = f"predicted {100 * pred['median']:.1f}% (90% interval {100 * pred['lo90']:.1f}% .. {100 * pred['hi90']:.1f}%)"
    if imp["mean"] <= 0:
        text = (f"vs {base}: the recommendation did NOT beat {base}: its weighted mean loss is {-pct:.1f}% higher"
                f"{spread}; better in {won}; {predicted}")
    elif imp["seeds_better"] == imp["n"]:
        text = f"vs {base}: the recommendation beat {base} in {won}: weighted mean loss {pct:.1f}% lower{spread}; {predicted}"
    elif ci is not None and ci[0] > 0:
        text = (f"vs {base}: better on average by {pct:.1f}%{spread}, which excludes 0, though not in every seed "
                f"(better in {won}); {predicted}")
    else:
        text = (f"vs {base}: better on average by {pct:.1f}%{spread}, but not in every seed (better in {won}): "
                f"not a clear win; {predicted}")
    if pred["lo90"] < 0 < pred["hi90"] and ci is not None and (ci[0] > 0 or ci[1] < 0):
        text += (" (the predicted interval includes 0 because it draws the two arms' runs independently; runs of one "
                 "seed share their initial weights, and the paired measurement resolved the difference)")
    elif pred["lo90"] < 0 < pred["hi90"]:
        text += f" (that interval includes 0: {imp['n']} seed(s) cannot resolve the predicted difference)"
    if imp["mean_inside90"] is False:
        text += " — the measured improvement lies OUTSIDE the predicted 90% interval"
    return text


# ------------------------------------------------------------------------------------ output


def _f(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _mark(row, seed) -> str:
    if row["inside50"].get(seed):
        return "●"  # inside the 50 % interval
    if row["inside90"].get(seed):
        return "○"  # inside the 90 % interval only
    return "✗"


def table_rows(result: dict) -> list[list[str]]:
    """The main table as strings (shared by the rich table and the markdown)."""
    seeds = result["seeds"]
    order = list(result["predicted"]["targets"]) + [MEAN]
    strategies = list(result["allocations"])
    out = []
    rows = sorted(result["comparison"]["rows"], key=lambda r: (order.index(r["target"]), strategies.index(r["strategy"])))
    for row in rows:
        p = row["predicted"]["single_run"]
        cells = [row["target"], row["strategy"], _f(p["median"]), f"{_f(p['lo50'])} .. {_f(p['hi50'])}",
                 f"{_f(p['lo90'])} .. {_f(p['hi90'])}"]
        for s in seeds:
            v = row["measured"].get(s)
            cells.append("-" if v is None else f"{v:.4g} {_mark(row, s)}")
        cells.append(_f(row["seed_mean"]))
        n = len(row["measured"])
        cells.append(f"{sum(row['inside50'].values())}/{n}" if n else "-")
        cells.append(f"{sum(row['inside90'].values())}/{n}" if n else "-")
        out.append(cells)
    return out


def table_header(result: dict) -> list[str]:
    return (["target", "strategy", "pred. median", "50 % interval", "90 % interval"]
            + [f"seed {s}" for s in result["seeds"]] + ["seed mean", "in 50 %", "in 90 %"])


def improvement_rows(result: dict) -> list[list[str]]:
    out = []
    for base, imp in result["comparison"]["improvement"].items():
        pred = imp["predicted"]
        pct = lambda x: "-" if x is None else f"{100 * x:+.1f}%"  # noqa: E731
        measured = " ".join(f"{pct(imp['per_seed'].get(s))}" for s in result["seeds"] if s in imp["per_seed"]) or "-"
        out.append([
            f"vs {base}",
            f"{pct(pred['law']['median'])} ({pct(pred['law']['lo90'])} .. {pct(pred['law']['hi90'])}), "
            f"P(better) {pred['law']['p_better']:.2f}",
            f"{pct(pred['seed_mean']['median'])} ({pct(pred['seed_mean']['lo90'])} .. {pct(pred['seed_mean']['hi90'])})",
            measured,
            "-" if imp["mean"] is None else f"{pct(imp['mean'])}" + ("" if imp["sd"] is None else f" ± {100 * imp['sd']:.1f}%"),
            "-" if imp.get("ci90") is None else f"{pct(imp['ci90'][0])} .. {pct(imp['ci90'][1])}",
            f"{imp['seeds_better']}/{imp['n']}" if imp["n"] else "-",
        ])
    return out


IMPROVEMENT_HEADER = ["improvement of the recommendation", "predicted, law (90 %), P(better)",
                      "predicted, mean of the seeds (90 %)", "measured per seed", "measured mean ± sd",
                      "measured, paired 90 % t-interval", "seeds better"]


def allocation_rows(result: dict) -> list[list[str]]:
    sources = list(next(iter(result["allocations"].values())))
    out = []
    for name, amounts in result["allocations"].items():
        obj = result["objective_values"].get(name)
        out.append([name] + [str(amounts[s]) for s in sources] + [str(sum(amounts.values())), _f(obj, 5)])
    return out


def allocation_header(result: dict) -> list[str]:
    sources = list(next(iter(result["allocations"].values())))
    return ["strategy"] + sources + ["volumes", f"{result['objective']} (law)"]


def markdown(result: dict) -> str:
    def md_table(header, rows):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)

    cov = result["comparison"]["coverage"]
    text = [
        f"# Closed loop: {result['budget']:g} volumes, objective {result['objective']}",
        "",
        f"Posterior: {result['fit']['diagnostics_text']}. Grid: `{result['grid']}` (largest training run "
        f"{result['grid_largest_run']:g} volumes). Runs: {result['steps_per_run']} steps each, seeds "
        f"{', '.join(map(str, result['seeds']))}; {result['runs_measured']} of {result['runs_planned']} measured.",
        "",
        "## Allocations (whole volumes)",
        "",
        md_table(allocation_header(result), allocation_rows(result)),
        "",
        "## Measured validation loss against the prediction for one new run",
        "",
        "Loss = masked-patch MSE on each domain's fixed validation crops (the grid's `loss`). "
        "Predicted: posterior predictive of one run (law + observation noise + typical evaluation "
        "noise), median and central intervals. ● inside the 50 % interval, ○ inside the 90 % only, ✗ outside. "
        f"`{MEAN}` = mean of the targets' losses with the allocation's weights.",
        "",
        md_table(table_header(result), table_rows(result)),
        "",
        f"Per-domain cells inside the 50 % / 90 % intervals: {cov['targets']['inside50']} / "
        f"{cov['targets']['inside90']} of {cov['targets']['n']}; weighted means: {cov[MEAN]['inside50']} / "
        f"{cov[MEAN]['inside90']} of {cov[MEAN]['n']}.",
        "",
        "## Improvement of the recommendation (1 − its weighted mean loss / the baseline's)",
        "",
        md_table(IMPROVEMENT_HEADER, improvement_rows(result)),
        "",
    ]
    text += [f"- {imp['verdict']}" for imp in result["comparison"]["improvement"].values()]
    text += ["", "Baseline (mean training volume) loss per target: "
             + ", ".join(f"{t} {v:.4g}" for t, v in result["baseline_loss"].items()), ""]
    if result.get("check"):
        c = result["check"]
        text += [f"`bayescale check`-style score of the measured runs (each run's own loss_se): n {c['n']}, "
                 f"Pearson r {c['pearson_r']:.3f}, median |rel. err.| {100 * c['median_abs_rel_error']:.1f}%, "
                 f"coverage 50 % {c['coverage_50']:.0%}, 90 % {c['coverage_90']:.0%}.", ""]
    text += [f"Note: {n}" for n in result.get("notes", [])]
    return "\n".join(text).rstrip() + "\n"


def plot(result: dict, path: Path) -> Path:
    """Predicted intervals and measured losses per target and strategy, the improvement, the allocations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayescale._files import atomic_path

    targets = list(result["predicted"]["targets"]) + [MEAN]
    strategies = list(result["allocations"])
    colours = dict(zip(strategies, ["#c0392b", "#2471a3", "#7f8c8d", "#27ae60", "#8e44ad"]))
    panels = len(targets) + 2
    ncols = 4
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    axes = axes.ravel()
    rows = {(r["strategy"], r["target"]): r for r in result["comparison"]["rows"]}
    for ax, t in zip(axes, targets):
        for x, name in enumerate(strategies):
            row = rows[(name, t)]
            p = row["predicted"]["single_run"]
            c = colours[name]
            ax.vlines(x, p["lo90"], p["hi90"], color=c, lw=1.5, alpha=0.6)
            ax.vlines(x, p["lo50"], p["hi50"], color=c, lw=6, alpha=0.6)
            ax.plot(x, p["median"], "_", color="k", ms=14, mew=2)
            seeds = sorted(row["measured"])
            if seeds:
                offsets = np.linspace(-0.12, 0.12, len(seeds)) + 0.28
                ax.scatter(x + offsets, [row["measured"][s] for s in seeds], s=18, color=c, edgecolor="k", lw=0.5, zorder=3)
                ax.plot(x + 0.28, row["seed_mean"], "D", color="white", mec="k", ms=6, zorder=4)
        if t in result["baseline_loss"]:  # the mean-volume predictor, where it is on the same scale
            lo, hi = ax.get_ylim()
            b = result["baseline_loss"][t]
            if lo - 0.5 * (hi - lo) <= b <= hi + 0.5 * (hi - lo):
                ax.axhline(b, color="0.5", ls="--", lw=1)
            else:
                ax.text(0.02, 0.02, f"mean-volume baseline {b:.3g} (off scale)", transform=ax.transAxes, fontsize=7, color="0.4")
        ax.set_xticks(range(len(strategies)), strategies, rotation=20, fontsize=8)
        ax.set_title(t, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].set_ylabel("validation masked MSE")
    ax = axes[len(targets)]
    for x, (base, imp) in enumerate(result["comparison"]["improvement"].items()):
        pred = imp["predicted"]
        ax.vlines(x - 0.12, 100 * pred["law"]["lo90"], 100 * pred["law"]["hi90"], color="k", lw=1.5)
        ax.vlines(x - 0.12, 100 * pred["law"]["lo50"], 100 * pred["law"]["hi50"], color="k", lw=6, alpha=0.5)
        ax.vlines(x + 0.12, 100 * pred["seed_mean"]["lo90"], 100 * pred["seed_mean"]["hi90"], color="0.6", lw=1.5)
        ax.vlines(x + 0.12, 100 * pred["seed_mean"]["lo50"], 100 * pred["seed_mean"]["hi50"], color="0.6", lw=6, alpha=0.6)
        if imp["per_seed"]:
            values = [100 * v for v in imp["per_seed"].values()]
            ax.scatter([x + 0.3] * len(values), values, s=18, color=colours.get(base, "C0"), edgecolor="k", lw=0.5, zorder=3)
            ax.plot(x + 0.3, 100 * imp["mean"], "D", color="white", mec="k", ms=6, zorder=4)
    ax.axhline(0, color="k", lw=0.8)
    bases = list(result["comparison"]["improvement"])
    ax.set_xticks(range(len(bases)), [f"vs {b}" for b in bases], fontsize=8)
    ax.set_ylabel("improvement of weighted mean loss, %", fontsize=8)
    ax.set_title(f"recommended vs baselines (black: law; grey: mean of\n{len(result['seeds'])} seeds, predicted; "
                 "dots: seeds, ◇: their mean)", fontsize=9)
    ax = axes[len(targets) + 1]
    sources = list(next(iter(result["allocations"].values())))
    bottom = np.zeros(len(strategies))
    for k, s in enumerate(sources):
        values = np.array([result["allocations"][n][s] for n in strategies], dtype=float)
        ax.bar(range(len(strategies)), values, bottom=bottom, label=s, color=plt.cm.tab10(k))
        bottom += values
    ax.set_xticks(range(len(strategies)), strategies, rotation=20, fontsize=8)
    ax.set_ylabel("training volumes", fontsize=8)
    ax.set_title(f"allocations of {result['budget']:g} volumes", fontsize=10)
    ax.set_ylim(0, 1.45 * max(bottom.max(), 1))
    ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle("Closed loop: predicted loss of one new run (bars: 50 % / 90 %, —: median) vs measured "
                 "(dots: seeds, ◇: mean; dashed: mean-volume baseline); "
                 f"{result['runs_measured']} of {result['runs_planned']} runs", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return path


def print_tables(result: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"allocations of {result['budget']:g} volumes")
    for h in allocation_header(result):
        t.add_column(h, justify="left" if h == "strategy" else "right")
    for r in allocation_rows(result):
        t.add_row(*r)
    console.print(t)
    t = Table(title="validation loss: predicted for one new run vs measured (● in 50 %, ○ in 90 %, ✗ outside)")
    header = table_header(result)
    for h in header:
        t.add_column(h, justify="left" if h in ("target", "strategy") else "right")
    previous = None
    for r in table_rows(result):
        if previous is not None and r[0] != previous:
            t.add_section()
        previous = r[0]
        t.add_row(*r)
    console.print(t)
    cov = result["comparison"]["coverage"]
    console.print(f"inside the 50 % / 90 % intervals: per-domain cells {cov['targets']['inside50']} / "
                  f"{cov['targets']['inside90']} of {cov['targets']['n']}; weighted means {cov[MEAN]['inside50']} / "
                  f"{cov[MEAN]['inside90']} of {cov[MEAN]['n']}", highlight=False)
    t = Table(title="improvement of the recommendation: 1 − its weighted mean loss / the baseline's")
    for h in IMPROVEMENT_HEADER:
        t.add_column(h, justify="left" if h.startswith("improvement") else "right")
    for r in improvement_rows(result):
        t.add_row(*r)
    console.print(t)
    for imp in result["comparison"]["improvement"].values():
        style = "bold red" if imp["n"] and imp["mean"] <= 0 else "bold"
        console.print(imp["verdict"], style=style, highlight=False)
    for note in result.get("notes", []):
        console.print(f"note: {note}", highlight=False)


# ------------------------------------------------------------------------------------ the stages


def load_settings(config_path: Path, args) -> dict:
    """Fit and allocation settings: the demo config, then the command line."""
    with Path(config_path).open("rb") as fh:
        config = tomllib.load(fh)
    grid = Path(args.grid) if args.grid else (Path(config_path).resolve().parent / config["grid"]).resolve()
    fit_cfg = dict(config.get("fit", {}))
    alloc = dict(config.get("allocate", {}))
    if args.smoke:
        fit_cfg.update(SMOKE["fit"])
    for key in ("chains", "warmup", "draws"):
        if getattr(args, key) is not None:
            fit_cfg[key] = getattr(args, key)
    budget = args.budget if args.budget is not None else (SMOKE["budget"] if args.smoke else alloc.get("budget"))
    if budget is None:
        raise InputError(f"{config_path}: no [allocate] budget; give --budget")
    if float(budget) != int(budget) or int(budget) < 1:
        raise InputError(f"--budget {budget}: a whole number of volumes >= 1")
    caps = alloc.get("available")
    if not caps:
        raise InputError(f"{config_path}: [allocate.available] (caps per domain) is needed for the proportional baseline")
    if int(budget) > sum(math.floor(float(v) + 1e-9) for v in caps.values()):
        raise InputError(f"budget {int(budget)} is more than the caps allow ({sum(caps.values()):g} volumes in all, "
                         f"[allocate.available] of {config_path})")
    return {
        "grid": str(grid),
        "fit": fit_cfg,
        "budget": int(budget),
        "objective": alloc.get("objective", "mean"),
        "caps": {k: float(v) for k, v in caps.items()},
        "weights": alloc.get("weights"),
        "seeds": parse_seeds(args.seeds),
        "seed": 0,
    }


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError(f"--seeds {text!r}: give distinct integers >= 0")
    return seeds


def load_or_fit(out: Path, grid, settings: dict, console):
    """The posterior of ``out/fit.nc`` if it was fitted to this grid with these settings, else a new NUTS fit."""
    from bayescale.data.grid import grid_fingerprint
    from bayescale.inference.fit import fit
    from bayescale.inference.posterior import load_posterior, save_posterior

    path = out / "fit.nc"
    key = json.dumps({"fit": settings["fit"], "seed": settings["seed"]}, sort_keys=True)
    if path.is_file():
        try:
            idata = load_posterior(path)
            if (idata.attrs.get("grid_fingerprint") == grid_fingerprint(grid)
                    and idata.attrs.get("closed_loop_fit") == key):
                console.print(f"[bold]fit[/] reusing {path} (same grid, same settings)")
                return idata, 0.0
        except InputError:
            pass
    fc = settings["fit"]
    console.print(f"[bold]fit[/] NUTS on {settings['grid']}: {fc.get('chains', 4)} chains × "
                  f"({fc.get('warmup', 500)} warm-up + {fc.get('draws', 500)} draws)…")
    t0 = time.perf_counter()
    idata = fit(grid, seed=settings["seed"], progress=False, grid_name=settings["grid"], **fc)
    seconds = time.perf_counter() - t0
    idata.attrs["closed_loop_fit"] = key
    save_posterior(idata, path)
    console.print(f"fit done in {seconds:.0f}s → {path}", highlight=False)
    return idata, seconds


def make_plan(draws, grid, settings: dict, idata) -> dict:
    """Allocations (recommended by ``allocate``, the two mixing rules), the runs and the pre-registered predictions."""
    from bayescale.optimise.allocate import allocate, objective_values, weights_vector

    caps = settings["caps"]
    unknown = [s for s in caps if s not in draws.sources]
    missing = [s for s in draws.sources if s not in caps]
    if unknown or missing:
        raise InputError(f"caps name {unknown or 'no'} unknown source(s) and miss {missing or 'none'}; "
                         f"the posterior's sources are {', '.join(draws.sources)}")
    budget = settings["budget"]
    t0 = time.perf_counter()
    result = allocate(draws, float(budget), objective=settings["objective"], upper=caps, weights=settings["weights"],
                      integer=True, uncertainty=0, seed=settings["seed"])
    integer = (result.get("integer") or {}).get("allocation")
    if integer is None:
        raise InputError(f"allocate found no whole-volume allocation: {(result.get('integer') or {}).get('note')}")
    allocations = {"recommended": {s: int(round(integer[s])) for s in draws.sources}}
    ordered_caps = {s: caps[s] for s in draws.sources}
    for rule in BASELINES:
        allocations[rule] = integer_rule(budget, ordered_caps, rule)
    w = weights_vector(draws, settings["weights"])
    objective_all = {name: objective_values(draws, np.array([a[s] for s in draws.sources], float), settings["objective"], w)
                     for name, a in allocations.items()}
    predicted = predict_allocations(draws, grid, allocations, w, settings)
    runs = plan_runs(allocations, settings["seeds"])
    keep = ("status", "objective", "objective_value", "allocation", "fractions", "binding", "shadow_price",
            "value_of_transfer", "integer", "certificate")
    return {
        "format": PLAN_FORMAT,
        "key": plan_key(settings, idata),
        "allocations": allocations,
        "objective_values": objective_all,
        "spend": {name: int(sum(a.values())) for name, a in allocations.items()},
        "runs": runs,
        "predicted": predicted,
        "allocate": {k: result.get(k) for k in keep},
        "allocate_seconds": time.perf_counter() - t0,
    }


def plan_key(settings: dict, idata) -> dict:
    return {
        "grid_fingerprint": str(idata.attrs.get("grid_fingerprint")),
        "fit": settings["fit"],
        "seed": settings["seed"],
        "budget": settings["budget"],
        "objective": settings["objective"],
        "caps": settings["caps"],
        "weights": settings["weights"],
        "seeds": settings["seeds"],
    }


def load_or_plan(out: Path, draws, grid, settings: dict, idata, console) -> dict:
    from bayescale._files import write_text_atomic

    path = out / "plan.json"
    key = json.loads(json.dumps(plan_key(settings, idata)))
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved and saved.get("format") == PLAN_FORMAT and saved.get("key") == key:
            console.print(f"[bold]plan[/] reusing {path} (same posterior, budget, objective, caps and seeds)")
            return saved
    console.print(f"[bold]allocate[/] {settings['budget']} volumes, {settings['objective']}, caps "
                  + ", ".join(f"{k} {v:g}" for k, v in settings["caps"].items()), highlight=False)
    plan = make_plan(draws, grid, settings, idata)
    write_text_atomic(path, json.dumps(plan, indent=1) + "\n")
    return plan


def train(out: Path, plan: dict, args, console):
    """Train every unfinished run of ``out/train.toml`` (``trainers.run.train_grid``; finished ones are skipped)."""
    from trainers.run import train_grid

    config_path = out / "train.toml"
    console.print(f"[bold]train[/] {len(plan['runs'])} runs from {config_path} (records and checkpoints in {out / 'records'})")
    return train_grid(config_path, out / "runs.nc", workers=args.workers, console=console, progress=not args.quiet)


def results_for(plan: dict, grid, settings: dict, diag: dict, measured_grid, steps_per_run, draws) -> dict:
    from bayescale.render.text import format_diagnostics

    comparison = compare(plan["predicted"], measured_from_grid(measured_grid, plan["runs"]) if measured_grid is not None else {})
    budgets = grid["data"].sum("source").values
    notes = []
    if not diag.get("ok", True):
        notes.append("sampler diagnostics are bad; the intervals are not to be trusted")
    spend = plan["spend"]
    if len(set(spend.values())) > 1:
        notes.append(f"the allocations do not spend the same number of volumes: {spend}")
    baseline = {}
    if "baseline_loss" in grid:
        baseline = {str(t): float(v) for t, v in zip(grid["target"].values, grid["baseline_loss"].values)}
    check = None
    if measured_grid is not None and measured_grid.sizes["run"] >= 1:
        from bayescale.evaluate.check import holdout_predictions, score_predictions

        runs = measured_grid.sel(run=[r["id"] for r in plan["runs"] if r["id"] in set(map(str, measured_grid["run"].values))])
        try:
            check = score_predictions(holdout_predictions(draws, runs, seed=settings["seed"], where="runs.nc")).to_dict()
        except InputError:
            check = None
    measured_ids = set() if measured_grid is None else set(map(str, measured_grid["run"].values))
    return {
        "format": RESULTS_FORMAT,
        "grid": shown_path(settings["grid"], REPO),
        "grid_largest_run": float(budgets.max()),
        "budget": settings["budget"],
        "objective": settings["objective"],
        "caps": settings["caps"],
        "seeds": settings["seeds"],
        "steps_per_run": steps_per_run,
        "fit": {"settings": settings["fit"], "diagnostics": diag, "diagnostics_text": format_diagnostics(diag)},
        "allocations": plan["allocations"],
        "objective_values": plan["objective_values"],
        "continuous_recommendation": (plan["allocate"] or {}).get("allocation"),
        "predicted_reducible_loss_reduction": (plan["allocate"] or {}).get("value_of_transfer"),
        "runs_planned": len(plan["runs"]),
        "runs_measured": sum(r["id"] in measured_ids for r in plan["runs"]),
        "predicted": plan["predicted"],
        "comparison": comparison,
        "baseline_loss": baseline,
        "check": check,
        "notes": notes,
    }


def measured_from_results(result: dict) -> dict:
    """The measured losses of a study's ``results.json``, shaped as :func:`measured_from_grid`'s
    (``{strategy: {seed: {"loss": {target: v}}}}``; the weighted-mean rows are left out)."""
    out: dict = {}
    for row in result["comparison"]["rows"]:
        if row["target"] == MEAN:
            continue
        for seed, value in row["measured"].items():
            out.setdefault(row["strategy"], {}).setdefault(int(seed), {"loss": {}})["loss"][row["target"]] = float(value)
    return out


def repredict(results_path: Path, out: Path, settings: dict, console) -> dict:
    """Today's model on a finished study: refit the study's grid with its fit settings (``OUT/fit.nc``,
    reused on a rerun), predict the study's allocations anew, compare with its measured losses.

    An after-the-fact check of a changed model (its noise, its priors), **not** a pre-registered
    prediction: the allocations are the study's, chosen by the model of the day it was planned."""
    from bayescale.data.grid import load_grid
    from bayescale.inference.posterior import diagnostics, law_draws
    from bayescale.inference.sbc import model_hash

    try:
        study = json.loads(results_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"--repredict {results_path}: cannot read the study's results ({error})") from None
    if study.get("format") != RESULTS_FORMAT:
        raise InputError(f"--repredict {results_path}: not a closed-loop results.json (format {study.get('format')!r})")
    # The study's grid (a path relative to the repository, or absolute where it lay outside it), not the config's.
    grid = load_grid(REPO / study["grid"])
    settings = {**settings, "grid": str(REPO / study["grid"]), "fit": study["fit"]["settings"], "seeds": study["seeds"]}
    idata, _ = load_or_fit(out, grid, settings, console)
    draws = law_draws(idata)
    predicted = predict_allocations(draws, grid, study["allocations"], study["predicted"]["weights"], settings)
    comparison = compare(predicted, measured_from_results(study))
    return {
        "format": "bayescale.closed_loop.repredicted/1",
        "note": ("today's model refitted and its predictions compared with the study's measured runs after the fact; "
                 "not pre-registered (the study's own predictions are in its results.json)"),
        "study": shown_path(results_path, REPO),
        "model": model_hash("transfer"),
        "fit": {"settings": settings["fit"], "diagnostics": diagnostics(idata)},
        "predicted": predicted,
        "comparison": comparison,
    }


def repredicted_markdown(result: dict) -> str:
    cov = result["comparison"]["coverage"]
    lines = [f"# Closed loop re-predicted with today's model (transfer model {result['model']})", "",
             f"{result['note']}. Study: `{result['study']}`.", "",
             f"Per-domain cells inside the 50 % / 90 % single-run intervals: {cov['targets']['inside50']} / "
             f"{cov['targets']['inside90']} of {cov['targets']['n']}; weighted means: {cov[MEAN]['inside50']} / "
             f"{cov[MEAN]['inside90']} of {cov[MEAN]['n']}.", "",
             "| vs | predicted gain, mean of the seeds: median [90 %] | law [90 %] | measured mean, paired 90 % t-interval |",
             "|---|---|---|---|"]
    for base, imp in result["comparison"]["improvement"].items():
        p, law, ci = imp["predicted"]["seed_mean"], imp["predicted"]["law"], imp["ci90"] or [math.nan, math.nan]
        lines.append(f"| {base} | {100 * p['median']:+.1f} % [{100 * p['lo90']:+.1f}, {100 * p['hi90']:+.1f}] | "
                     f"{100 * law['median']:+.1f} % [{100 * law['lo90']:+.1f}, {100 * law['hi90']:+.1f}] | "
                     f"{100 * imp['mean']:+.1f} % [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ensure_host_devices()  # parallel chains: before anything starts JAX
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="fit and allocation settings (default data/configs/demo.toml)")
    parser.add_argument("--train-config", type=Path, default=DEFAULT_TRAIN_CONFIG,
                        help="trainers config whose recipe the runs use (default data/configs/phantom.toml)")
    parser.add_argument("--grid", type=Path, default=None, help="loss grid to fit (default: the config's grid)")
    parser.add_argument("--budget", type=int, default=None, help="volumes per run (default: the config's budget, 144)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds, comma-separated (default 0-4: issue 16 asks for 5)")
    parser.add_argument("--workers", type=int, default=None, help="runs in parallel (default: one per GPU, else per core)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="training device (auto keeps the shipped recipe's config hash; cpu/cuda change it)")
    parser.add_argument("--steps", type=int, default=None, help="fixed steps per run (tests only: not the shipped recipe)")
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--plan-only", action="store_true", help="fit, plan, predict and write train.toml; train nothing")
    parser.add_argument("--repredict", type=Path, default=None, metavar="RESULTS.json",
                        help="refit today's model (into --out, default out/closed-loop-repredict) and compare its predictions "
                             "of a finished study's allocations with the study's measured losses; writes repredicted.json/.md "
                             "beside RESULTS.json; trains nothing")
    parser.add_argument("--smoke", action="store_true", help="plumbing check: 20 steps per run, budget 6, short NUTS")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from rich.console import Console

    from bayescale.data import grid as grids
    from bayescale._files import write_text_atomic
    from bayescale.inference.posterior import diagnostics, law_draws
    from bayescale.render.text import format_diagnostics
    from trainers.config import config_hash, load_config

    console = Console() if sys.stdout.isatty() else Console(width=200)  # logs: no wrapping of the tables
    try:
        if args.steps is not None and args.steps < 1:
            raise InputError(f"--steps {args.steps}: at least 1")
        if args.workers is not None and args.workers < 1:
            raise InputError(f"--workers {args.workers}: at least 1")
        out = args.out or (SMOKE_OUT if args.smoke else REPREDICT_OUT if args.repredict else DEFAULT_OUT)
        out.mkdir(parents=True, exist_ok=True)
        settings = load_settings(args.config, args)
        if args.repredict is not None:
            result = repredict(args.repredict, out, settings, console)
            folder, text = args.repredict.parent, repredicted_markdown(result)
            write_text_atomic(folder / "repredicted.json", json.dumps(result, indent=1) + "\n")
            write_text_atomic(folder / "repredicted.md", text)
            console.print(text, highlight=False)
            console.print(f"wrote {folder / 'repredicted.json'} and {folder / 'repredicted.md'}", highlight=False)
            return 0
        grid = grids.load_grid(settings["grid"])
        console.rule("closed loop")
        timings = {}
        t0 = time.perf_counter()
        idata, _ = load_or_fit(out, grid, settings, console)
        timings["fit"] = time.perf_counter() - t0
        diag = diagnostics(idata)
        console.print("diagnostics: " + format_diagnostics(diag), highlight=False)
        if not diag["ok"]:
            console.print("[bold red]WARNING: sampler diagnostics are bad; intervals are not to be trusted[/]")
        draws = law_draws(idata)
        t0 = time.perf_counter()
        plan = load_or_plan(out, draws, grid, settings, idata, console)
        timings["plan"] = time.perf_counter() - t0
        steps = args.steps if args.steps is not None else (SMOKE["steps"] if args.smoke else None)
        write_text_atomic(out / "train.toml", train_config_text(Path(args.train_config), plan["runs"], out, steps=steps,
                                                                device=None if args.device == "auto" else args.device))
        train_config = load_config(out / "train.toml")
        steps_per_run = train_config.training.steps_for(settings["budget"])
        recipe = {"config_hash": config_hash(train_config, None), "grid_config_hash": grid.attrs.get("config_hash")}
        measured = None
        if args.plan_only:
            console.print(f"--plan-only: wrote {out / 'plan.json'} and {out / 'train.toml'} "
                          f"({len(plan['runs'])} runs of {steps_per_run} steps); nothing trained", highlight=False)
            if (out / "runs.nc").is_file():
                measured = grids.load_grid(out / "runs.nc")
        else:
            t0 = time.perf_counter()
            res = train(out, plan, args, console)
            timings["train"] = time.perf_counter() - t0
            console.print(f"trained {res.trained}, skipped {res.skipped} finished, in {res.seconds:.0f}s", highlight=False)
            measured = grids.load_grid(res.out)
        t0 = time.perf_counter()
        result = results_for(plan, grid, settings, diag, measured, steps_per_run, draws)
        result["recipe"] = recipe
        if recipe["grid_config_hash"] and recipe["config_hash"] != recipe["grid_config_hash"]:
            result["notes"].append("the runs do not use the recipe the grid was trained with "
                                   f"(config hash {recipe['config_hash']}, "
                                   f"grid {recipe['grid_config_hash']}: other steps or device): a plumbing check, not a result")
        write_text_atomic(out / "results.json", json.dumps(result, indent=1) + "\n")
        write_text_atomic(out / "results.md", markdown(result))
        plot(result, out / "closed_loop.png")
        timings["report"] = time.perf_counter() - t0
        print_tables(result, console)
        console.print("stage times: " + " · ".join(f"{k} {v:.1f}s" for k, v in timings.items()), highlight=False)
        made = "fit.nc plan.json train.toml" + ("" if args.plan_only else " runs.nc records/")
        console.print(f"outputs in {out}/: {made} results.json results.md closed_loop.png", highlight=False)
    except InputError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished runs keep their records and checkpoints; the same command resumes", highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
