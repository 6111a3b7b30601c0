"""Learning curves from `bench/quality.py --converge` runs: one panel per dataset and configuration.

    .venv/bin/python bench/curves.py /tmp/helpdesk.json /tmp/acme.json --out docs/images/learning_curves.png

Each panel draws, against optimizer steps, the training loss, the held-back questions' fact loss (the
stopping rule's score: questions never trained on, docs/training.md) and, where the KL term ran, the
anchor KL; a vertical line marks the step whose weights were published. The title gives what the
evaluation measured on those weights: held-out and trained fact accuracy, KL and general perplexity.
The evaluation is not run at every step (it takes minutes), so held-out accuracy is one point per run;
the held-back fact loss is its per-step stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by bench/quality.py --out")
    p.add_argument("--out", type=Path, default=Path("learning_curves.png"))
    args = p.parse_args()
    rows = [r for path in args.results for r in json.loads(path.read_text()) if r.get("curves")]
    if not rows:
        raise SystemExit("no run with curves in those files (bench/quality.py records them since --converge)")
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    fig, axes = pyplot.subplots(len(rows), 1, figsize=(8, 3.2 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for tag, style in (("train/loss", "-"), ("stopping/held_back_loss", "o-"), ("train/anchor_kl", "--")):
            points = row["curves"].get(tag)
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], style, label=tag, markersize=3,
                        alpha=0.5 if tag == "train/loss" else 1.0)
        if row.get("best_step"):
            ax.axvline(row["best_step"], color="grey", linestyle=":", label=f"published: step {row['best_step']}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{row['dataset']} / {row['variant']} (seed {row['seed']}): held-out {row['held_out']:.1%}, "
                     f"trained {row['trained']:.1%}, KL {row['kl']:.2f}, general ppl {row['ppl_increase']:+.0%}",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
