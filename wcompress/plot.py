"""Per-layer weight histograms as a PNG (seed 004, Fig. 1). Needs matplotlib: pip install wcompress[plot]."""

import math

from wcompress.errors import WcompressError

MAX_PANELS = 48


def plot_histograms(profile, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise WcompressError("--plot needs matplotlib: pip install 'wcompress[plot]'") from exc
    rows = [r for r in profile["tensors"] if r.get("hist") and r["role"] in ("kernel", "embedding", "recurrent_kernel")]
    if not rows:
        raise WcompressError("no weight tensors to plot", profile["path"])
    rows = rows[:MAX_PANELS]
    cols = min(4, len(rows))
    grid = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(grid, cols, figsize=(4 * cols, 2.6 * grid), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        edges = [r["min"] + (r["max"] - r["min"]) * i / len(r["hist"]) for i in range(len(r["hist"]) + 1)]
        ax.stairs(r["hist"], edges, fill=True)
        ax.set_title(r["name"][-40:], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"{profile['path']}: weight histograms")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
