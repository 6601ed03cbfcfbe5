"""FlowSOM on 1M events × 15 markers (2 cores): training on every event against training on a
subsample (``ip.tl.flowsom(n_train=…)``), and how far apart two clusterings are.

Prints the seconds of each fit, and the mean FlowCAP F1 (``ip.tl.cluster_f1``, one
clustering's metaclusters matched to the other's as reference) between: the full fit and a
subsample fit; two full fits that differ only in the seed (FlowSOM's own seed variation); and
each fit against the simulated truth (12 populations, some rare).

Run: ``python benchmarks/bench_flowsom.py [--events 1000000] [--n-train 100000]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd

import immunoprofile as ip


def events(n: int, seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Twelve populations in 15 dimensions, weights from 30% to 0.3%, shared noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (12, 15))
    weights = np.array([30, 20, 12, 10, 8, 6, 5, 4, 2, 1.5, 1.2, 0.3])
    labels = rng.choice(12, n, p=weights / weights.sum())
    X = (centers[labels] + rng.normal(0, 0.6, (n, 15))).astype(np.float32)
    return ad.AnnData(X=X, var=pd.DataFrame(index=[f"M{i}" for i in range(15)])), labels


def mean_f1(reference, clusters) -> float:
    return float(ip.tl.cluster_f1(reference, clusters)["f1"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--n-train", type=int, default=100_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    adata, truth = events(args.events)
    markers = list(adata.var_names)
    ip.tl.flowsom(adata[:5000].copy(), markers=markers, n_train=2000)  # numba, cached
    fits = {}
    for name, kwargs in (("full, seed 0", {"random_state": 0}),
                         ("full, seed 1", {"random_state": 1}),
                         (f"n_train={args.n_train:,}, seed 0",
                          {"random_state": 0, "n_train": args.n_train}),
                         ("full, seed 0, 10 x 10 grid (FlowSOM's default)",
                          {"random_state": 0, "xdim": 10, "ydim": 10})):
        t0 = time.perf_counter()
        ip.tl.flowsom(adata, markers=markers, **kwargs)  # in place, as a notebook calls it
        fits[name] = (time.perf_counter() - t0, adata.obs["flowsom"].to_numpy().copy())
        print(f"{name}: {fits[name][0]:.1f} s", flush=True)
    names = list(fits)[:3]
    rows = [{"pair": f"{a} vs {b}", "mean F1": round(mean_f1(fits[a][1], fits[b][1]), 3)}
            for a, b in ((names[0], names[1]), (names[0], names[2]))]
    rows += [{"pair": f"{n} vs truth", "mean F1": round(mean_f1(truth, fits[n][1]), 3)}
             for n in names]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
