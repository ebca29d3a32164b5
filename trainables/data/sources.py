"""What a `data:` value names: "synthetic" (the built-in dataset) or a dataset directory.

    from trainables.data.sources import resolve_dataset
    ds = resolve_dataset("synthetic")       # generated once, then read from the cache
    ds = resolve_dataset("data/uiowa")      # a dataset directory
"""

from __future__ import annotations

from trainables.data.dataset import Dataset, load_dataset

SYNTHETIC = "synthetic"  # the `data:` value that means the built-in synthetic instruments


def resolve_dataset(spec: str) -> Dataset:
    """The dataset `spec` names: "synthetic" is the built-in one (generated and cached on first
    use), anything else a dataset directory."""
    if spec == SYNTHETIC:
        from trainables.data.synthetic import builtin_dataset_dir

        return load_dataset(builtin_dataset_dir())
    return load_dataset(spec)
