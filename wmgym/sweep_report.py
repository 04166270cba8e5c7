"""A sweep result for people: the real-vs-imagined scatter and the Markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wmgym.viz import save_figure


def plot_sweep(result: dict[str, Any], path: str | Path) -> Path:
    """Scatter of real vs imagined success, one labeled point per policy, and the line y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="y = x")
    points: dict[tuple[float, float], list[int]] = {}  # policies on one point share it
    for i, p in enumerate(result["policies"], 1):
        points.setdefault((p["real"]["success"], p["imagined"]["success"]), []).append(i)
    for (x, y), numbers in points.items():
        names = [f"{i}: {result['policies'][i - 1]['name']}" for i in numbers]
        ax.scatter(x, y, s=30, label="\n".join(names))
        ax.annotate(
            ",".join(map(str, numbers)),
            (x, y),
            textcoords="offset points",
            xytext=(-5 if x > 0.6 else 5, -5 if y > 0.6 else 5),  # into the plot
            ha="right" if x > 0.6 else "left",
            va="top" if y > 0.6 else "bottom",
            fontsize=8,
        )
    m = result["metrics"]["success"] or {}
    fmt = {k: "n/a" if v is None else f"{v:.2f}" for k, v in m.items()}
    ax.set_title(
        f"Pearson {fmt.get('pearson', 'n/a')}, Spearman {fmt.get('spearman', 'n/a')}, "
        f"MMRV {fmt.get('mmrv', 'n/a')}",
        fontsize=9,
    )
    ax.set_xlabel(f"real success ({result['sim_env']}, {result['episodes']} episodes)")
    ax.set_ylabel(f"imagined success ({result['wm_env']})")
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")


def format_table(result: dict[str, Any]) -> str:
    """Per-policy success, return and uncertainty in both twins, then the metrics, as Markdown."""
    lines = [
        "| policy | real success | imagined success | real return | imagined return | "
        "uncertainty | doubt |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["policies"]:
        r, s = p["real"], p["imagined"]
        u, d = ("–" if s.get(k) is None else f"{s[k]:.2f}" for k in ("uncertainty", "doubt"))
        lines.append(
            f"| {p['name']} | {r['success']:.2f} | {s['success']:.2f} | "
            f"{r['return']:.2f} | {s['return']:.2f} | {u} | {d} |"
        )
    for key, m in result["metrics"].items():
        if isinstance(m, dict):
            lines.append(
                f"\n{key}: " + ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in m.items())
            )
    if "uncertainty_auroc" in result["metrics"]:
        m = result["metrics"]
        aurocs = ", ".join(f"{k.removesuffix('_auroc')} {'n/a' if m[k] is None else m[k]}"
                           for k in ("uncertainty_auroc", "doubt_auroc") if k in m)
        lines.append(f"\nAUROC for an imagined outcome that differs from the real one: {aurocs}"
                     f" ({m['parted_episodes']} such episodes)")
    return "\n".join(lines)
