"""Training throughput of one tiny MAE run, against a bare MONAI training loop (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_trainers.py [--config data/configs/phantom.toml] [--steps 200]
                                                  [--domain ct_abdomen] [--volumes 16]

Prints one table. Every row trains the same MONAI MaskedAutoEncoderViT (the config's sizes, batch
and thread count) on random crops of the same volumes for the same number of steps:

- ``trainers``: :func:`trainers.run.train_run`, the code the grid uses (volumes preprocessed
  once and cached, random crops after the cache, masked-patch MSE, AdamW);
- ``bare MONAI, CacheDataset``: the textbook loop, ``CacheDataset`` over the file names with
  the deterministic transforms cached and ``RandSpatialCropd`` after them, ``DataLoader``
  (its MetaTensor batches handed to the model as plain tensors, so the model time compares);
- ``bare MONAI, no cache``: the same with a plain ``Dataset``, every volume loaded, resampled and
  normalised again on every draw (fewer steps: it is slow), to show what the cache is for.

Columns: steps/s, volumes/s (training crops per second), and the share of step time spent waiting
for the next batch versus in the model (forward, backward, optimiser step). The pipeline is not
the bottleneck when the model share is >= 90 %.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from trainers.config import load_config  # noqa: E402
from trainers.design import RunSpec, pool_order  # noqa: E402
from trainers.domains import load_manifest, prepare_data, preprocess_transform, train_crop_transform  # noqa: E402
from trainers.mae import build_model, mae_loss  # noqa: E402
from trainers.run import ensure_phantoms, resolve_device, train_run  # noqa: E402


def bare_monai_loop(files, domain, config, steps: int, cache: bool, device) -> dict:
    """A plain MONAI training loop on the same model, files and crops: (Cache)Dataset + DataLoader."""
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.transforms import Compose

    transform = Compose([*preprocess_transform(domain, config.data).transforms, train_crop_transform(config.data.crop, 0)])
    items = [{"image": str(p)} for p in files]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = CacheDataset(items, transform=transform, num_workers=0, progress=False) if cache else Dataset(items, transform=transform)
    setup = time.perf_counter() - t0
    bs = config.training.batch_size
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * bs,
                                             generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=bs, sampler=sampler, num_workers=0)
    torch.manual_seed(0)
    model = build_model(config.model, config.data.crop).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.training.lr)
    wait = compute = 0.0
    t_data = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in loader:
            x = batch["image"]
            x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(device)  # a plain tensor: MetaTensor slows every op
            t_compute = time.perf_counter()
            wait += t_compute - t_data
            loss = mae_loss(model, x, config.model.patch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t_data = time.perf_counter()
            compute += t_data - t_compute
    return {"steps": steps, "wait": wait, "compute": compute, "setup": setup}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "data" / "configs" / "phantom.toml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--domain", default="ct_abdomen")
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--uncached-steps", type=int, default=20)
    args = parser.parse_args()
    console = Console(width=140)

    config = load_config(args.config)
    ensure_phantoms(config, console)
    manifest = load_manifest(config.data.manifest, config.data.validation_per_domain)
    cache_dir = config.data.cache_dir or REPO / "out" / "bench-cache"
    t0 = time.perf_counter()
    data = prepare_data(config, manifest, cache_dir)
    prep = time.perf_counter() - t0
    domain = manifest[args.domain]
    device = resolve_device(config.training.device)
    bs = config.training.batch_size
    spec = RunSpec(id="bench", data={args.domain: args.volumes}, seed=0, split="fit", kind="explicit", steps=args.steps)
    files = [domain.train[i] for i in pool_order(args.domain, 0, len(domain.train))[: args.volumes]]

    rows = []
    ours = train_run(spec, data, config, targets=[args.domain])
    s = ours["seconds"]
    rows.append(("trainers (cached, crops after the cache)", args.steps, s["data_wait"], s["compute"], f"{prep:.1f} s (all domains, from the disk cache)"))
    torch.set_num_threads(config.training.threads)  # as train_run does; MONAI meta tracking stays on for Spacing
    bare = bare_monai_loop(files, domain, config, args.steps, cache=True, device=device)
    rows.append(("bare MONAI, CacheDataset", bare["steps"], bare["wait"], bare["compute"], f"{bare['setup']:.1f} s (CacheDataset fill)"))
    raw = bare_monai_loop(files, domain, config, args.uncached_steps, cache=False, device=device)
    rows.append(("bare MONAI, no cache", raw["steps"], raw["wait"], raw["compute"], "-"))

    table = Table(title=f"one tiny MAE run: {args.domain}, {args.volumes} volumes, batch {bs}, "
                        f"crop {'x'.join(map(str, config.data.crop))}, {config.training.threads} thread(s), {device.type}")
    for col in ("pipeline", "steps", "steps/s", "volumes/s", "data wait", "in the model", "setup"):
        table.add_column(col, justify="left" if col in ("pipeline", "setup") else "right")
    for name, steps, wait, compute, setup in rows:
        total = wait + compute
        table.add_row(name, str(steps), f"{steps / total:.2f}", f"{steps * bs / total:.1f}", f"{wait / total:.1%}",
                      f"{compute / total:.1%}", setup)
    console.print(table)
    console.print(f"evaluation of the trainers run on {len(data.domains[args.domain].val_crops)} fixed validation crops: "
                  f"{s['eval']:.2f} s", highlight=False)


if __name__ == "__main__":
    main()
