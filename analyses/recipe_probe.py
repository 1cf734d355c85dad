"""Probe a pretraining recipe: own-domain ladders of the phantom domains, scored against the mean volume.

    .venv/bin/python analyses/recipe_probe.py --name mask05-steps2 \\
        --set model.mask_ratio=0.5 --set training.base_steps=2400 --set training.steps_per_volume=100 \\
        [--domains ct_abdomen,pet_wholebody] [--budgets 4,16,48] [--seeds 0,1,2] [--workers 1]
        [--config data/configs/phantom.toml] [--out out/recipe-probe] [--smoke]
    .venv/bin/python analyses/recipe_probe.py --report [--out out/recipe-probe]

Issue 16 asks for a recipe whose models learn: at the top budget of every own-domain ladder the
masked-patch loss at least 25 % below the mean-volume baseline, every ladder monotone in its seed
means, and a seed-to-seed spread of at most 2 %. This script measures one candidate recipe against
those goals:

1. writes ``OUT/NAME/train.toml``: the base config (``--config``, the shipped grid's by default:
   its phantoms, data, model and training) with each ``--set SECTION.KEY=VALUE`` applied (VALUE is
   TOML: ``0.5``, ``[4.0, 4.0, 4.0]``, ``"cpu"``), and a design of single-domain runs only
   (``--domains`` x ``--budgets`` x ``--seeds``);
2. trains it with the trainers (``OUT/NAME/grid.nc``, records beside it; a rerun skips finished
   runs, so an interrupted probe resumes, and more seeds or budgets can be added later);
3. prints the ladders against the goals (:mod:`bayescale.data.ladders`) and writes
   ``OUT/NAME/ladders.md``.

``--report`` prints every probe under ``OUT`` side by side: the top-budget ratio per domain, the
worst seed spread and whether each ladder is monotone. The findings go in ``trainers/NOTES-recipe.md``.

``--smoke`` is a plumbing check, not a result: 20 steps per run, one domain, budgets 1 and 2, seeds
0 and 1, into ``out/recipe-probe-smoke``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayescale._files import write_text_atomic  # noqa: E402
from bayescale.errors import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "data" / "configs" / "phantom.toml"
DEFAULT_OUT = REPO / "out" / "recipe-probe"
SMOKE_OUT = REPO / "out" / "recipe-probe-smoke"
SETTABLE = ("data", "model", "training", "phantoms")  # not design: the probe's own design replaces it


def parse_setting(text: str) -> tuple[str, str, object]:
    """``SECTION.KEY=VALUE`` (VALUE in TOML syntax) as (section, key, value)."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise InputError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. model.mask_ratio=0.5")
    if section not in SETTABLE:
        raise InputError(f"--set {text!r}: section {section!r} is not one of {', '.join(SETTABLE)}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"--set {text!r}: {value.strip()!r} is not a TOML value ({exc})") from None
    return section, key.strip(), parsed


def probe_config_text(base_path: Path, settings: list[tuple[str, str, object]], out_dir: Path, *, domains: list[str] | None,
                      budgets: list[int], seeds: list[int], name: str) -> str:
    """The probe's trainers config as TOML text for ``out_dir/train.toml``: the base config with the
    settings applied, its paths made relative to ``out_dir``, and a single-domain design."""
    from analyses.closed_loop import relocated_config, to_toml

    base_path = Path(base_path)
    raw = relocated_config(base_path, out_dir)
    for section, key, value in settings:
        table = raw.setdefault(section, {})
        # steps and steps_per_volume exclude each other: setting one drops the other's keys
        if (section, key) == ("training", "steps"):
            for other in ("steps_per_volume", "base_steps", "min_steps", "max_steps"):
                table.pop(other, None)
        elif section == "training" and key in ("steps_per_volume", "base_steps"):
            table.pop("steps", None)
        table[key] = value
    raw["design"] = {"fit_budgets": sorted(set(budgets)), "mixtures_per_budget": 0, "seeds": list(seeds)}
    if domains is not None:  # None: every domain of the manifest
        raw["design"]["domains"] = list(domains)
    changed = ", ".join(f"{s}.{k}={v!r}" for s, k, v in settings) or "none"
    raw["description"] = f"recipe probe {name!r} of {base_path.name}; changed: {changed}"
    head = (f"# Written by analyses/recipe_probe.py from {os.path.relpath(base_path.resolve(), out_dir)} with: {changed}.\n"
            "# Paths are relative to this file. Regenerated on every run of the script.\n")
    text = head + to_toml(raw)
    if tomllib.loads(text) != raw:
        raise AssertionError("closed_loop.to_toml did not round-trip the probe's config")
    return text


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated whole numbers") from None
    if not values:
        raise InputError(f"{flag} {text!r}: is empty")
    return values


def report(out: Path, console) -> int:
    """Every probe under ``out``, side by side."""
    from bayescale.data.grid import load_grid
    from bayescale.data.ladders import ladder_goals, own_domain_ladders
    from bayescale.render.text import format_probe_comparison

    rows = []
    for grid_path in sorted(out.glob("*/grid.nc")):
        ladders = own_domain_ladders(load_grid(grid_path))
        rows.append((grid_path.parent.name, ladders, ladder_goals(ladders)))
    if not rows:
        raise InputError(f"{out}: no probes here (no */grid.nc); run one with --name first")
    console.print(format_probe_comparison(rows), highlight=False)
    return 0


def main(argv=None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="The probe's folder under --out (letters, digits, - and _).")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Change one field of the base config (repeatable); VALUE is TOML.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Base trainers config.")
    parser.add_argument("--domains", help="Comma-separated domains (default: every domain of the manifest).")
    parser.add_argument("--budgets", default="4,16,48", help="Own-domain budgets in volumes.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=None, help="Runs in parallel (default: one per core).")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", action="store_true", help="Only compare the probes already under --out.")
    parser.add_argument("--smoke", action="store_true", help="Plumbing check: 20 steps per run, tiny design.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    try:
        out = args.out or (SMOKE_OUT if args.smoke else DEFAULT_OUT)
        if args.report:
            return report(out, console)
        return probe(args, out, console)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; rerun the same command to go on", file=sys.stderr)
        return 130


def probe(args, out: Path, console) -> int:
    from bayescale.data.grid import load_grid
    from bayescale.data.ladders import ladder_goals, own_domain_ladders
    from bayescale.render.text import format_ladders
    from trainers.config import load_config, read_toml
    from trainers.run import train_grid

    if not args.name or not all(c.isalnum() or c in "-_" for c in args.name):
        raise InputError(f"--name {args.name!r}: give the probe a name of letters, digits, - and _")
    settings = [parse_setting(s) for s in args.settings]
    budgets, seeds = _ints(args.budgets, "--budgets"), _ints(args.seeds, "--seeds")
    if args.smoke:
        settings += [("training", "steps", 20)]
        budgets, seeds = [1, 2], [0, 1]
    # Without --domains the design names none, so every manifest domain is trained; the manifest is
    # not read here: on a fresh machine its phantoms are only written when training starts.
    domains = [d.strip() for d in args.domains.split(",")] if args.domains else None
    if args.smoke and domains is None:
        base = load_config(args.config)
        listed = read_toml(base.data.manifest, "manifest").get("domains") or []
        domains = [str(d.get("name")) for d in listed[:1]]
    if args.smoke:
        domains = domains[:1]
    if domains is not None and not domains:
        raise InputError("--domains: none given")

    folder = out / args.name
    new_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "train.toml"
    previous = config_path.read_text() if config_path.exists() else None
    text = probe_config_text(args.config, settings, folder, domains=domains, budgets=budgets, seeds=seeds, name=args.name)
    write_text_atomic(config_path, text)
    try:
        load_config(config_path)  # a bad --set fails here, with the field's name, before any training
    except InputError:  # leave nothing behind: the folder as it was
        if previous is None:
            config_path.unlink()
        else:
            write_text_atomic(config_path, previous)
        if new_folder:
            folder.rmdir()
        raise
    shown = "every domain" if domains is None else f"{len(domains)} domains"
    console.print(f"[bold]probe[/] {args.name}: {shown} x budgets {budgets} x seeds {seeds} ({config_path})")
    result = train_grid(config_path, folder / "grid.nc", workers=args.workers, console=console, progress=not args.quiet)
    ladders = own_domain_ladders(load_grid(result.out))
    table = format_ladders(ladders, ladder_goals(ladders))
    console.print(table, highlight=False)
    write_text_atomic(folder / "ladders.md", f"# recipe probe {args.name}\n\n{text.splitlines()[0]}\n\n```\n{table}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
