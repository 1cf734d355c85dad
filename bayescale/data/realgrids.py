"""Real third-party measurements turned into loss grids (contract 1).

Two public collections of language-model pretraining runs, read as published (they are
not shipped with bayescale; see ``../shared/data/README.md``):

- **OpenLM scaling** (Gadre et al. 2024, "Language models scale reliably with
  over-training and on downstream tasks", repository mlfoundations/scaling,
  ``exp_data/models/*.json``): 104 runs of 5 model sizes (plus 1B/7B singletons) on 3
  corpora (``c4_original``, ``rpj``, ``rw_original``) at token multipliers 0.25-32 of the
  Chinchilla-optimal budget, each evaluated on 8 validation sets.
  :func:`openlm_grid` / :func:`openlm_grids` make transfer-law grids of them: the
  sources are the training corpora, the data are training tokens (billions), the targets
  are the 8 validation sets (none of them is a source, so all their effective data comes
  by transfer), ``loss_se`` comes from the published 95 % token-level intervals.
- **RegMix** (Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model
  Pre-training", repository sail-sg/regmix, MIT licence): 512 runs of 1M-parameter
  models, each trained on 1B tokens of a random mixture of 17 Pile domains, evaluated on
  13 Pile validation sets. :func:`regmix_grid` makes one fixed-budget grid of them for
  the exponential mixing law (:mod:`bayescale.laws.mixing`).

Every reader fails with an :class:`~bayescale.errors.InputError` whose one-line message
names the file (and the run, key or column) at fault.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from bayescale.data import grid as grids
from bayescale.errors import InputError

#: Environment variable that points at the shared data folder (overrides the default
#: ``<repo>/../shared/data``).
DATA_ENV = "BAYESCALE_SHARED_DATA"
OPENLM_FOLDER = "openlm-scaling"
REGMIX_FOLDER = "regmix-1m"
REGMIX_MIXTURE_FILE = "train_mixture_1m.csv"
REGMIX_LOSS_FILE = "train_pile_loss_1m.csv"
#: Tokens each RegMix 1M-parameter proxy model was trained on (the paper: 512 models of
#: 1M parameters for 1B tokens each).
REGMIX_BUDGET_TOKENS = 1e9
#: z of a central 95 % normal interval: se = half-width / 1.96.
Z95 = 1.959963984540054


def shared_data_dir() -> Path | None:
    """The folder of shared third-party data, or None where it is absent.

    ``$BAYESCALE_SHARED_DATA`` if set, else ``../shared/data`` next to the repository root.
    """
    env = os.environ.get(DATA_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return folder if folder.is_dir() else None


# ---------------------------------------------------------------------------
# OpenLM scaling


@dataclass(frozen=True)
class OpenLMRun:
    """One trained language model of the OpenLM scaling collection."""

    name: str  # the file stem, e.g. "rpj-d=512_l=8_h=4-4.0"
    corpus: str  # training corpus (dataset_name)
    model: str  # model configuration, e.g. "d=512_l=8_h=4" or "open_lm_1b"
    params: int  # parameters
    tokens: float  # training tokens
    multiplier: float  # tokens / (20 * params), the "Chinchilla multiplier"
    seed: int
    loss: dict[str, float] = field(default_factory=dict)  # validation set -> loss (nats/token)
    loss_se: dict[str, float] = field(default_factory=dict)  # validation set -> standard error


def _need(obj, key, where, prefix=""):
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"{where}: missing key {prefix + key!r}")
    return obj[key]


def _finite(value, where, name) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise InputError(f"{where}: {name} is {number}, not a finite number")
    return number


def validation_set_name(val_data) -> str:
    """A short name for an OpenLM validation set from its shard path(s):
    ``training/eval_data/val_tok_mult/paloma_ptb/00000001.tar`` -> ``paloma_ptb``."""
    path = val_data[0] if isinstance(val_data, (list, tuple)) and val_data else val_data
    if not isinstance(path, str) or not path:
        raise ValueError(f"val_data is {val_data!r}")
    parts = [p for p in path.split("/") if p]
    return parts[-2] if len(parts) >= 2 else parts[-1]


def read_openlm_run(path: str | os.PathLike) -> OpenLMRun:
    """Read one model's JSON file of the OpenLM scaling collection."""
    path = Path(path)
    where = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not valid JSON ({error.msg} at line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{where}: cannot read the file ({type(error).__name__})") from None
    corpus = _need(record, "dataset_name", where)
    hyper = _need(record, "hyperparameters", where)
    tokens = _finite(_need(hyper, "tokens", where, "hyperparameters."), where, "hyperparameters.tokens")
    params = _finite(_need(hyper, "params", where, "hyperparameters."), where, "hyperparameters.params")
    multiplier = _finite(_need(hyper, "chinchilla_multiplier", where, "hyperparameters."), where,
                         "hyperparameters.chinchilla_multiplier")
    if tokens <= 0 or params <= 0 or multiplier <= 0:
        raise InputError(f"{where}: tokens, params and chinchilla_multiplier must be > 0")
    model = Path(str(_need(hyper, "model", where, "hyperparameters."))).stem
    args = record.get("open_lm_args") or []
    seed = 0
    if "--seed" in args and args.index("--seed") + 1 < len(args):
        try:
            seed = int(args[args.index("--seed") + 1])
        except ValueError:
            seed = 0
    results = _need(record, "results", where)
    if not isinstance(results, list) or not results:
        raise InputError(f"{where}: 'results' holds no validation losses")
    loss, loss_se = {}, {}
    for k, result in enumerate(results):
        try:
            target = validation_set_name(_need(result, "val_data", f"{where} results[{k}]"))
        except ValueError as error:
            raise InputError(f"{where} results[{k}]: {error}") from None
        at = f"{where} validation set {target!r}"
        if target in loss:
            raise InputError(f"{at}: appears twice in 'results'")
        value = _finite(_need(result, "loss", at), at, "loss")
        lo = _finite(_need(result, "loss_tokens_lower_95", at), at, "loss_tokens_lower_95")
        hi = _finite(_need(result, "loss_tokens_upper_95", at), at, "loss_tokens_upper_95")
        if value <= 0:
            raise InputError(f"{at}: loss is {value}; losses must be > 0")
        if hi < lo:
            raise InputError(f"{at}: loss_tokens_upper_95 {hi} is below loss_tokens_lower_95 {lo}")
        loss[target] = value
        loss_se[target] = (hi - lo) / (2 * Z95)
    return OpenLMRun(name=path.stem, corpus=str(corpus), model=model, params=int(params), tokens=tokens,
                     multiplier=multiplier, seed=seed, loss=loss, loss_se=loss_se)


def read_openlm_runs(directory: str | os.PathLike | None = None) -> list[OpenLMRun]:
    """Every run (``*.json``) of an OpenLM scaling folder, sorted by corpus, model and tokens.

    ``directory`` defaults to ``openlm-scaling`` in :func:`shared_data_dir`.
    """
    directory = _folder(directory, OPENLM_FOLDER)
    files = sorted(directory.glob("*.json"))
    if not files:
        raise InputError(f"{directory}: no *.json run files")
    runs = [read_openlm_run(f) for f in files]
    return sorted(runs, key=lambda r: (r.corpus, r.params, r.model, r.tokens, r.name))


def openlm_grid(
    runs: Sequence[OpenLMRun] | str | os.PathLike | None = None,
    *,
    corpus: str | Sequence[str] | None = None,
    model: str,
    holdout_from: float = 16.0,
    tokens_per_unit: float = 1e9,
) -> xr.Dataset:
    """A loss grid of the OpenLM runs of one model size, validated per contract 1.

    - ``run``: the file stem (corpus-model-multiplier); coords ``corpus``, ``model``,
      ``params`` and ``chinchilla_multiplier`` per run;
    - ``source``: the training corpus (``corpus`` a name: one source; a list or None: each
      corpus of this model size is one source and each run has data on its own corpus only);
    - ``data``: training tokens in billions (``tokens_per_unit``), ``attrs["data_unit"]``;
    - ``target``: the 8 validation sets (e.g. ``c4_val``, ``paloma_ptb``, ``de-en``), none
      of them a source: all of their effective data comes by transfer;
    - ``loss``: token-level cross-entropy (nats/token); ``loss_se``: the half-width of the
      published 95 % interval / 1.96;
    - ``split``: ``"holdout"`` for runs with Chinchilla multiplier >= ``holdout_from``
      (over-trained runs the law must extrapolate to), ``"fit"`` otherwise.

    ``runs`` is a list from :func:`read_openlm_runs` or a folder of JSON files.
    """
    if runs is None or isinstance(runs, (str, os.PathLike)):
        runs = read_openlm_runs(runs)
    if isinstance(corpus, str):
        wanted = [corpus]
    elif corpus is None:
        wanted = sorted({r.corpus for r in runs if r.model == model})
    else:
        wanted = list(corpus)
    chosen = [r for r in runs if r.model == model and r.corpus in wanted]
    if not chosen:
        known = sorted({(r.corpus, r.model) for r in runs})
        raise InputError(f"no OpenLM runs of model {model!r} on corpus {', '.join(wanted) or '(any)'}; "
                         f"there are {', '.join(f'{c}/{m}' for c, m in known)}")
    missing = [c for c in wanted if not any(r.corpus == c for r in chosen)]
    if missing:
        raise InputError(f"no OpenLM runs of model {model!r} on corpus {missing[0]!r}")
    targets = _ordered(t for r in chosen for t in r.loss)
    data = np.zeros((len(chosen), len(wanted)))
    loss = np.full((len(chosen), len(targets)), np.nan)
    loss_se = np.full(loss.shape, np.nan)
    for n, r in enumerate(chosen):
        data[n, wanted.index(r.corpus)] = r.tokens / tokens_per_unit
        for j, t in enumerate(targets):
            if t in r.loss:
                loss[n, j], loss_se[n, j] = r.loss[t], r.loss_se[t]
    ds = grids.make_grid(
        [r.name for r in chosen], wanted, targets, data, loss,
        seed=[r.seed for r in chosen],
        split=["holdout" if r.multiplier >= holdout_from else "fit" for r in chosen],
        loss_se=loss_se,
        attrs={
            "loss_name": "token_cross_entropy_nats",
            "data_unit": "billion tokens" if tokens_per_unit == 1e9 else f"{tokens_per_unit:g} tokens",
            "description": (f"OpenLM scaling (Gadre et al. 2024), model {model}, corpus {', '.join(wanted)}: "
                            "training tokens vs 8 validation losses; "
                            f"runs at Chinchilla multiplier >= {holdout_from:g} held out"),
            "model": model,
            "params": int(chosen[0].params),
            "holdout_from_multiplier": float(holdout_from),
        },
    )
    # The published intervals are over each validation set's fixed tokens: every run is scored
    # on the same tokens, so the error is the evaluation set's, shared by all runs.
    ds.attrs["loss_se_kind"] = "shared"
    return ds.assign_coords(
        corpus=("run", np.array([r.corpus for r in chosen], dtype=object)),
        model=("run", np.array([r.model for r in chosen], dtype=object)),
        params=("run", np.array([r.params for r in chosen], dtype=np.int64)),
        chinchilla_multiplier=("run", np.array([r.multiplier for r in chosen])),
    )


def openlm_grids(
    runs: Sequence[OpenLMRun] | str | os.PathLike | None = None,
    *,
    holdout_from: float = 16.0,
    min_fit_runs: int = 4,
) -> dict[tuple[str, str], xr.Dataset]:
    """One grid (:func:`openlm_grid`) per (corpus, model size), keyed ``(corpus, model)``.

    A (corpus, model) pair is left out when it has fewer than ``min_fit_runs`` fit runs or
    no held-out run (the 1B and 7B models have one or two runs each).
    """
    if runs is None or isinstance(runs, (str, os.PathLike)):
        runs = read_openlm_runs(runs)
    out = {}
    for corpus, model in _ordered((r.corpus, r.model) for r in runs):
        group = [r for r in runs if r.corpus == corpus and r.model == model]
        n_holdout = sum(r.multiplier >= holdout_from for r in group)
        if len(group) - n_holdout >= min_fit_runs and n_holdout > 0:
            out[(corpus, model)] = openlm_grid(group, corpus=corpus, model=model, holdout_from=holdout_from)
    return out


# ---------------------------------------------------------------------------
# RegMix


def regmix_grid(
    directory: str | os.PathLike | None = None,
    *,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    targets: Iterable[str] | None = None,
    budget_tokens: float = REGMIX_BUDGET_TOKENS,
) -> xr.Dataset:
    """The RegMix 1M-parameter runs as one fixed-budget loss grid, validated per contract 1.

    - ``run``: ``"regmix-<index>"`` (the CSVs' ``index`` column);
    - ``source``: the 17 training domains, named without the ``train_the_pile_`` prefix
      (``arxiv``, ``pile_cc``, ...);
    - ``data``: mixture weight x the 1B-token budget, in **billion tokens** (so a run's
      data sum to its budget, 1 +- 0.004: the published weights are rounded to 3 decimals);
    - ``target``: the 13 validation sets, named like the sources (``arxiv`` is both a
      training and a validation domain); ``targets`` selects a subset;
    - ``loss``: validation cross-entropy of the 1M-parameter model (no standard error is
      published);
    - ``split``: a seeded random ``holdout_fraction`` of the runs is ``"holdout"``.
    """
    directory = _folder(directory, REGMIX_FOLDER)
    mix_path, loss_path = directory / REGMIX_MIXTURE_FILE, directory / REGMIX_LOSS_FILE
    mix_index, sources, weights = _read_numeric_csv(mix_path, "train_the_pile_", "")
    loss_index, all_targets, losses = _read_numeric_csv(loss_path, "metric/the_pile_", "_val_loss")
    if mix_index != loss_index:
        extra = sorted(set(mix_index) ^ set(loss_index))
        raise InputError(f"{loss_path}: its run index does not match {mix_path.name}'s "
                         f"(first difference: run {extra[0] if extra else 'order'})")
    for n, row in enumerate(weights):
        if row.sum() <= 0:
            raise InputError(f"{mix_path}: run {mix_index[n]!r} has all-zero mixture weights")
        bad = np.flatnonzero(row < 0)
        if bad.size:
            raise InputError(f"{mix_path}: run {mix_index[n]!r}, column {sources[bad[0]]!r} is a negative weight")
    if targets is not None:
        targets = list(targets)
        unknown = [t for t in targets if t not in all_targets]
        if unknown:
            raise InputError(f"{loss_path}: no validation set {unknown[0]!r}; there are {', '.join(all_targets)}")
        losses = losses[:, [all_targets.index(t) for t in targets]]
    else:
        targets = all_targets
    if not 0 <= holdout_fraction < 1:
        raise InputError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
    n_runs = len(mix_index)
    n_holdout = int(round(holdout_fraction * n_runs))
    holdout = np.zeros(n_runs, dtype=bool)
    holdout[np.random.default_rng(seed).permutation(n_runs)[:n_holdout]] = True
    return grids.make_grid(
        [f"regmix-{i}" for i in mix_index], sources, targets, weights * (budget_tokens / 1e9), losses,
        split=np.where(holdout, "holdout", "fit"),
        attrs={
            "loss_name": "token_cross_entropy_nats",
            "data_unit": "billion tokens",
            "description": ("RegMix (Liu et al. 2024): 512 1M-parameter models, each trained on 1B tokens of a random "
                            "mixture of 17 Pile domains, evaluated on 13 Pile validation sets; data = weight x budget; "
                            f"{n_holdout} runs held out at random (seed {seed})"),
            "fixed_budget": float(budget_tokens / 1e9),
        },
    )


def _read_numeric_csv(path: Path, prefix: str, suffix: str) -> tuple[list[str], list[str], np.ndarray]:
    """(index column, other column names stripped of prefix/suffix, float matrix) of a CSV."""
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{where}: cannot read the file ({type(error).__name__})") from None
    if not rows or not rows[0]:
        raise InputError(f"{where}: empty file")
    header = [h.strip() for h in rows[0]]
    if header[0] != "index":
        raise InputError(f"{where} line 1: the first column is {header[0]!r}; expected 'index'")
    columns = header[1:]
    if not columns:
        raise InputError(f"{where} line 1: no columns besides 'index'")
    names = []
    for column in columns:
        name = column
        if name.startswith(prefix):
            name = name[len(prefix):]
        if suffix and name.endswith(suffix):
            name = name[: -len(suffix)]
        names.append(name)
    body = [(k + 2, row) for k, row in enumerate(rows[1:]) if any(cell.strip() for cell in row)]
    if not body:
        raise InputError(f"{where}: no rows after the header")
    index, values = [], np.empty((len(body), len(columns)))
    for n, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise InputError(f"{where} line {line}: {len(row)} cells; the header has {len(header)}")
        index.append(row[0].strip())
        for j, cell in enumerate(row[1:]):
            try:
                values[n, j] = float(cell)
            except ValueError:
                raise InputError(f"{where} line {line}: column {columns[j]!r} is {cell!r}, not a number") from None
            if not math.isfinite(values[n, j]):
                raise InputError(f"{where} line {line}: column {columns[j]!r} is {cell!r}, not a finite number")
    return index, names, values


def _folder(directory, default_name: str) -> Path:
    if directory is None:
        base = shared_data_dir()
        if base is None:
            raise InputError(f"no shared data folder: set ${DATA_ENV} or put the data in ../shared/data")
        directory = base / default_name
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such folder")
    return directory


def _ordered(items):
    """Distinct items in order of first appearance."""
    return list(dict.fromkeys(items))
