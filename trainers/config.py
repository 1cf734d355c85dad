"""The training config: one TOML file that fixes the phantoms, the data, the model, the training
protocol and the run design of a loss grid.

Every path in the file is resolved relative to the file's folder. Unknown sections or keys, values
of the wrong type and impossible sizes are an :class:`~bayescale.errors.InputError` whose one-line
message names the file and the key. A config looks like::

    description = "five phantom domains, tiny MAE"

    [phantoms]                    # optional: generate these first if they are missing
    out = "../manifests/phantoms"
    per_domain = 60
    seed = 0

    [data]
    manifest = "../manifests/phantom.toml"
    spacing = [6.0, 6.0, 6.0]     # mm, every volume is resampled to it
    crop = 32                     # voxels (an int or three)
    validation_per_domain = 4     # last volumes of each domain, never trained on
    validation_crops = 4          # fixed crops per validation volume (the first is the centre)
    cache_dir = "../manifests/phantoms/.cache"

    [model]                       # MONAI MaskedAutoEncoderViT sizes
    patch_size = 8
    hidden_size = 96
    ...

    [training]
    batch_size = 8
    lr = 1e-3
    steps = 1500                  # fixed; or base_steps + steps_per_volume * budget:
    # base_steps = 1200; steps_per_volume = 50.0; min_steps = 1; max_steps = 10000
    device = "auto"               # auto | cpu | cuda
    threads = 1                   # torch threads per run (fixed, so results do not depend on the executor)
    grad_clip = 0.0               # clip the gradient's L2 norm to this each step (0: off)

    [design]
    fit_budgets = [2, 4, 8, 16]
    holdout_budgets = [32, 48]
    mixtures_per_budget = 2
    seeds = [0]

A design file (``bayescale train --design FILE``, e.g. from ``bayescale propose --design``) holds
only ``[[design.runs]]``; :func:`with_extra_runs` appends its runs to a config's design.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bayescale.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PhantomConfig:
    out: Path
    per_domain: int = 20
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    manifest: Path
    spacing: tuple[float, float, float] = (6.0, 6.0, 6.0)
    crop: tuple[int, int, int] = (32, 32, 32)
    validation_per_domain: int = 4
    validation_crops: int = 4
    cache_dir: Path | None = None


@dataclass(frozen=True)
class ModelConfig:
    patch_size: int = 8
    hidden_size: int = 96
    mlp_dim: int = 192
    num_layers: int = 3
    num_heads: int = 4
    decoder_hidden_size: int = 60
    decoder_mlp_dim: int = 120
    decoder_num_layers: int = 1
    decoder_num_heads: int = 4
    mask_ratio: float = 0.75


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.05
    steps: int | None = None
    steps_per_volume: float | None = None
    base_steps: int = 0
    min_steps: int = 1
    max_steps: int | None = None
    device: str = "auto"
    threads: int = 1
    eval_batch_size: int = 16
    mask_seed: int = 1234
    log_every: int = 50
    save_checkpoints: bool = False  # write <records>/<run id>.pt (the weights) beside each record
    grad_clip: float = 0.0  # clip the gradient's global L2 norm to this before each step; 0: no clipping

    def steps_for(self, budget: float) -> int:
        """Optimisation steps of a run with ``budget`` training volumes: ``steps``, or
        ``base_steps + steps_per_volume * budget`` clamped to [min_steps, max_steps]."""
        if self.steps is not None:
            return int(self.steps)
        n = self.base_steps + int(round(float(self.steps_per_volume) * budget))
        n = max(n, self.min_steps)
        if self.max_steps is not None:
            n = min(n, self.max_steps)
        return max(n, 1)


@dataclass(frozen=True)
class ExplicitRun:
    id: str
    data: dict[str, int]
    seed: int = 0
    split: str = "fit"
    source: Path | None = field(default=None, compare=False)  # the design file it came from, if not the config


@dataclass(frozen=True)
class DesignConfig:
    fit_budgets: tuple[int, ...] = ()
    holdout_budgets: tuple[int, ...] = ()
    single_domain: bool = True
    holdout_single_domain: bool = False
    mixtures_per_budget: int = 0
    holdout_mixtures_per_budget: int = 0
    mixture_budgets: tuple[int, ...] | None = None
    concentration: float = 1.0
    seeds: tuple[int, ...] = (0,)
    design_seed: int = 0
    domains: tuple[str, ...] | None = None
    runs: tuple[ExplicitRun, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    path: Path
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    design: DesignConfig = field(default_factory=DesignConfig)
    phantoms: PhantomConfig | None = None
    records: Path | None = None
    description: str = ""

    @property
    def name(self) -> str:
        return str(self.path)

    def results_dict(self) -> dict:
        """Everything that changes what one run computes (not the design, not the phantoms' location)."""
        return {
            "data": _plain(asdict(self.data), drop=("manifest", "cache_dir")),
            "model": _plain(asdict(self.model)),
            # grad_clip = 0 (off) is left out, so records written before the option keep their hash
            "training": _plain(asdict(self.training),
                               drop=("log_every", "save_checkpoints") + (("grad_clip",) if self.training.grad_clip == 0 else ())),
            "phantoms": None if self.phantoms is None else _plain(asdict(self.phantoms), drop=("out",)),
        }


def _plain(d: dict, drop=()) -> dict:
    out = {}
    for k, v in d.items():
        if k in drop:
            continue
        out[k] = list(v) if isinstance(v, tuple) else (str(v) if isinstance(v, Path) else v)
    return out


def config_hash(config: TrainConfig, domains_fingerprint: Any) -> str:
    """A short hash of what makes a run's result: the config's results part and the domains' files."""
    payload = json.dumps({"config": config.results_dict(), "domains": domains_fingerprint, "version": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# reading


class _Table:
    """A TOML table that hands out typed values and complains (one line, file and key) otherwise."""

    def __init__(self, data: dict, where: str, prefix: str = "", context: str = ""):
        self.data, self.where, self.prefix, self.context, self.used = data, where, prefix, context, set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str) -> InputError:
        return InputError(f"{self.where}: {self.context}{self.key(name)} {message}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default=None):
        self.used.add(name)
        return self.data.get(name, default)

    def int(self, name: str, default=None, *, minimum: int | None = None, required: bool = False):
        if name not in self.data:
            if required:
                raise self.fail(name, "is missing")
            self.used.add(name)
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"is {value!r}; expected an integer")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"is {value}; it must be >= {minimum}")
        return value

    def float(self, name: str, default=None, *, positive: bool = False, minimum: float | None = None,
              maximum: float | None = None, required: bool = False):
        if name not in self.data:
            if required:
                raise self.fail(name, "is missing")
            self.used.add(name)
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(name, f"is {value!r}; expected a finite number")
        value = float(value)
        if positive and value <= 0:
            raise self.fail(name, f"is {value:g}; it must be > 0")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"is {value:g}; it must be >= {minimum:g}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"is {value:g}; it must be <= {maximum:g}")
        return value

    def str(self, name: str, default=None, *, choices=None, required: bool = False):
        if name not in self.data:
            if required:
                raise self.fail(name, "is missing")
            self.used.add(name)
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise self.fail(name, f"is {value!r}; expected a string")
        if choices is not None and value not in choices:
            raise self.fail(name, f"is {value!r}; expected one of {', '.join(choices)}")
        return value

    def bool(self, name: str, default: bool):
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"is {value!r}; expected true or false")
        return value

    def ints(self, name: str, default=(), *, minimum: int | None = None, length: int | None = None):
        value = self.raw(name, list(default) if default is not None else None)
        if value is None:
            return None
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise self.fail(name, f"is {value!r}; expected a list of integers")
        if length is not None and len(value) != length:
            raise self.fail(name, f"has {len(value)} values; expected {length}")
        if minimum is not None and any(v < minimum for v in value):
            raise self.fail(name, f"is {value!r}; every value must be >= {minimum}")
        return tuple(value)

    def path(self, name: str, base: Path, *, required: bool = False):
        text = self.str(name, required=required)
        if text is None:
            return None
        if not text.strip():
            raise self.fail(name, "is empty; expected a path")
        p = Path(text).expanduser()
        return p if p.is_absolute() else (base / p)

    def table(self, name: str) -> _Table:
        value = self.raw(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, "must be a table")
        return _Table(value, self.where, f"{self.key(name)}.")

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            known = ", ".join(sorted(self.used))
            raise InputError(f"{self.where}: {self.context}unknown key {self.key(unknown[0])!r}; known keys here: {known}")


def read_toml(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a {what} file") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML ({' '.join(str(error).split())})") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} ({error.strerror or error})") from None


def _triple(table: _Table, name: str, default, kind):
    value = table.raw(name, default)
    if isinstance(value, bool):
        raise table.fail(name, f"is {value!r}; expected a number or a list of three")
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise table.fail(name, f"is {value!r}; expected a number or a list of three")
    if kind is int and any(not isinstance(v, int) for v in value):
        raise table.fail(name, f"is {value!r}; expected integers")
    if any(not math.isfinite(v) or v <= 0 for v in value):
        raise table.fail(name, f"is {value!r}; every value must be > 0")
    return tuple(kind(v) for v in value)


def load_config(path: str | Path) -> TrainConfig:
    """Read and check a training config TOML (see the module docstring)."""
    path = Path(path)
    where = str(path)
    raw = read_toml(path, "config")
    base = path.resolve().parent
    top = _Table(raw, where)

    description = top.str("description", "")
    records = top.path("records", base)

    phantoms = None
    if top.has("phantoms"):
        t = top.table("phantoms")
        phantoms = PhantomConfig(
            out=t.path("out", base, required=True),
            per_domain=t.int("per_domain", 20, minimum=1),
            seed=t.int("seed", 0, minimum=0),
        )
        t.done()

    if not top.has("data"):
        raise InputError(f"{where}: no [data] section (it names the manifest of the domains)")
    t = top.table("data")
    data = DataConfig(
        manifest=t.path("manifest", base, required=True),
        spacing=_triple(t, "spacing", (6.0, 6.0, 6.0), float),
        crop=_triple(t, "crop", (32, 32, 32), int),
        validation_per_domain=t.int("validation_per_domain", 4, minimum=1),
        validation_crops=t.int("validation_crops", 4, minimum=1),
        cache_dir=t.path("cache_dir", base),
    )
    t.done()

    t = top.table("model")
    d = ModelConfig()
    model = ModelConfig(
        patch_size=t.int("patch_size", d.patch_size, minimum=1),
        hidden_size=t.int("hidden_size", d.hidden_size, minimum=1),
        mlp_dim=t.int("mlp_dim", d.mlp_dim, minimum=1),
        num_layers=t.int("num_layers", d.num_layers, minimum=1),
        num_heads=t.int("num_heads", d.num_heads, minimum=1),
        decoder_hidden_size=t.int("decoder_hidden_size", d.decoder_hidden_size, minimum=1),
        decoder_mlp_dim=t.int("decoder_mlp_dim", d.decoder_mlp_dim, minimum=1),
        decoder_num_layers=t.int("decoder_num_layers", d.decoder_num_layers, minimum=1),
        decoder_num_heads=t.int("decoder_num_heads", d.decoder_num_heads, minimum=1),
        mask_ratio=t.float("mask_ratio", d.mask_ratio, minimum=0.0),
    )
    t.done()
    _check_model(model, data, where)

    t = top.table("training")
    d = TrainingConfig()
    steps = t.int("steps", None, minimum=1)
    per_volume = t.float("steps_per_volume", None, positive=True)
    if (steps is None) == (per_volume is None):
        raise InputError(f"{where}: [training] needs exactly one of steps (fixed) or steps_per_volume (proportional to the budget)")
    training = TrainingConfig(
        batch_size=t.int("batch_size", d.batch_size, minimum=1),
        lr=t.float("lr", d.lr, positive=True),
        weight_decay=t.float("weight_decay", d.weight_decay, minimum=0.0),
        warmup_fraction=t.float("warmup_fraction", d.warmup_fraction, minimum=0.0, maximum=1.0),
        min_lr_fraction=t.float("min_lr_fraction", d.min_lr_fraction, minimum=0.0, maximum=1.0),
        steps=steps,
        steps_per_volume=per_volume,
        base_steps=t.int("base_steps", 0, minimum=0),
        min_steps=t.int("min_steps", d.min_steps, minimum=1),
        max_steps=t.int("max_steps", None, minimum=1),
        device=t.str("device", d.device, choices=DEVICES),
        threads=t.int("threads", d.threads, minimum=1),
        eval_batch_size=t.int("eval_batch_size", d.eval_batch_size, minimum=1),
        mask_seed=t.int("mask_seed", d.mask_seed, minimum=0),
        log_every=t.int("log_every", d.log_every, minimum=1),
        save_checkpoints=t.bool("save_checkpoints", d.save_checkpoints),
        grad_clip=t.float("grad_clip", d.grad_clip, minimum=0.0),
    )
    t.done()
    if steps is not None and (t.has("base_steps") or t.has("min_steps") or t.has("max_steps")):
        raise InputError(f"{where}: training.base_steps, min_steps and max_steps go with steps_per_volume, not with a fixed steps")
    if training.max_steps is not None and training.max_steps < training.min_steps:
        raise InputError(f"{where}: training.max_steps ({training.max_steps}) is below training.min_steps ({training.min_steps})")

    design = _read_design(top.table("design"), where)
    top.done()
    return TrainConfig(path=path, data=data, model=model, training=training, design=design, phantoms=phantoms,
                       records=records, description=description)


def _check_model(model: ModelConfig, data: DataConfig, where: str) -> None:
    if not 0 < model.mask_ratio < 1:
        raise InputError(f"{where}: model.mask_ratio is {model.mask_ratio:g}; it must be between 0 and 1")
    for c in data.crop:
        if c % model.patch_size:
            raise InputError(f"{where}: data.crop {list(data.crop)} is not a multiple of model.patch_size {model.patch_size}")
    for size, heads, prefix in ((model.hidden_size, model.num_heads, ""), (model.decoder_hidden_size, model.decoder_num_heads, "decoder_")):
        if size % heads:
            raise InputError(f"{where}: model.{prefix}hidden_size {size} is not divisible by model.{prefix}num_heads {heads}")
        if size % 6:
            raise InputError(f"{where}: model.{prefix}hidden_size {size} must be divisible by 6 (3D sin-cos position embedding)")
    tokens = math.prod(c // model.patch_size for c in data.crop)
    if int((1 - model.mask_ratio) * tokens) < 1:
        raise InputError(f"{where}: model.mask_ratio {model.mask_ratio:g} leaves no visible patch of {tokens}")


def _read_design(t: _Table, where: str) -> DesignConfig:
    d = DesignConfig()
    fit_budgets = t.ints("fit_budgets", (), minimum=1)
    holdout_budgets = t.ints("holdout_budgets", (), minimum=1)
    seeds = t.ints("seeds", (0,), minimum=0)
    if not seeds:
        raise t.fail("seeds", "is empty; give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise t.fail("seeds", f"is {list(seeds)}; seeds must be distinct")
    mixture_budgets = t.ints("mixture_budgets", None, minimum=1)
    domains = t.raw("domains", None)
    if domains is not None:
        if not isinstance(domains, list) or not domains or any(not isinstance(x, str) for x in domains):
            raise t.fail("domains", f"is {domains!r}; expected a list of domain names")
        domains = tuple(domains)
    runs = _read_runs(t, where)
    design = DesignConfig(
        fit_budgets=tuple(sorted(set(fit_budgets))),
        holdout_budgets=tuple(sorted(set(holdout_budgets))),
        single_domain=t.bool("single_domain", d.single_domain),
        holdout_single_domain=t.bool("holdout_single_domain", d.holdout_single_domain),
        mixtures_per_budget=t.int("mixtures_per_budget", 0, minimum=0),
        holdout_mixtures_per_budget=t.int("holdout_mixtures_per_budget", 0, minimum=0),
        mixture_budgets=None if mixture_budgets is None else tuple(sorted(set(mixture_budgets))),
        concentration=t.float("concentration", d.concentration, positive=True),
        seeds=tuple(seeds),
        design_seed=t.int("design_seed", 0, minimum=0),
        domains=domains,
        runs=tuple(runs),
    )
    t.done()
    if design.fit_budgets and design.holdout_budgets and min(design.holdout_budgets) <= max(design.fit_budgets):
        raise InputError(
            f"{where}: design.holdout_budgets {list(design.holdout_budgets)} must all lie above every fit budget "
            f"(largest {max(design.fit_budgets)})"
        )
    if not design.fit_budgets and not design.runs:
        raise InputError(f"{where}: the design has no runs; set design.fit_budgets or add [[design.runs]]")
    return design


def _read_runs(t: _Table, where: str, source: Path | None = None) -> tuple[ExplicitRun, ...]:
    """The ``[[design.runs]]`` of the design table ``t``; ``source`` is the file when it is not the config."""
    runs = []
    raw_runs = t.raw("runs", [])
    if not isinstance(raw_runs, list):
        raise t.fail("runs", "must be an array of tables ([[design.runs]])")
    for k, item in enumerate(raw_runs):
        if not isinstance(item, dict):
            raise t.fail("runs", f"entry {k + 1} is not a table")
        r = _Table(item, where, f"design.runs[{k + 1}].")
        run_id = r.str("id", required=True)
        amounts = r.raw("data", None)
        if not isinstance(amounts, dict) or not amounts:
            raise r.fail("data", "must be a table of domain = volumes, e.g. data = { ct_abdomen = 4 }")
        for name, n in amounts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise r.fail("data", f"gives {name} = {n!r}; volumes must be integers >= 0")
        runs.append(ExplicitRun(id=run_id, data=dict(amounts), seed=r.int("seed", 0, minimum=0),
                                split=r.str("split", "fit", choices=("fit", "holdout")), source=source))
        r.done()
    return tuple(runs)


def read_design_runs(path: str | Path) -> tuple[ExplicitRun, ...]:
    """The explicit runs of a design file: ``[[design.runs]]`` tables and nothing else (as
    ``bayescale propose --design`` writes them)."""
    path = Path(path)
    where = str(path)
    top = _Table(read_toml(path, "design"), where)
    t = top.table("design")
    runs = _read_runs(t, where, source=path)
    t.done()  # a ladder or any other [design] key belongs in the config, not here
    top.done()
    if not runs:
        raise InputError(f"{where}: no [[design.runs]]; a design file lists explicit runs")
    return runs


def with_extra_runs(config: TrainConfig, design_path: str | Path) -> TrainConfig:
    """``config`` with the explicit runs of the design file appended to its design.

    A run id the config's design already has is refused by :func:`trainers.design.make_design`
    (which knows the generated ids), naming the id and the design file. The results part of the
    config is unchanged, so :func:`config_hash` and the existing records stay valid.
    """
    extra = read_design_runs(design_path)
    return replace(config, design=replace(config.design, runs=config.design.runs + extra))
