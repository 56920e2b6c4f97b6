"""The evaluation report's plots (matplotlib, written as PNG files; no display needed).

Each function takes the report's rows (`deed_jax.evaluation.sweep.summarise`) or per-token data and
writes one figure: the metric against decoder latency (the Pareto curve), the metric per exit layer,
where tokens exit, and a few answers with each token coloured by the layer it exited at.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a TPU VM or in CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

_STYLE = {
  "deed": dict(color="tab:blue", marker="o"),
  "copy": dict(color="tab:orange", marker="^"),
  "fixed": dict(color="tab:gray", marker="s"),
  "static": dict(color="black", marker="*"),
}


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def metric_window(rows: Sequence[dict]) -> tuple[float, float]:
  """The Pareto panel's metric range: from 10 points below the lowest non-fixed setting (fixed exits
  far below are named instead) to a little above the best, at least 20 points tall, and never
  above 102 (a metric tops out at 100; the rest is room for labels): near the top of the scale the
  window extends downwards."""
  floor = min(r["metric"] for r in rows if r["exit_mode"] != "fixed")
  bottom = max(0.0, floor - 10.0)
  top = max(r["metric"] for r in rows) + 0.08 * (100.0 - bottom) + 1.0
  top = min(max(top, bottom + 20.0), 102.0)
  return max(0.0, min(bottom, top - 20.0)), top


_LABELS = {
  "deed": "DEED (thresholds)",
  "copy": "copy (CALM baseline)",
  "fixed": "fixed exit k",
  "static": "static (all layers)",
}


def pareto(rows: Sequence[dict], path: str, calibrated: float | None = None) -> str:
  """The metric against decoder ms/sample, one panel per batch size: DEED and copy as curves over
  the thresholds, fixed exits and static as baselines; the calibrated threshold circled."""
  sizes = sorted({r["batch_size"] for r in rows if "decoder_ms_per_sample" in r})
  fig, axes = plt.subplots(1, len(sizes), figsize=(6.4 * len(sizes), 4.8), squeeze=False)
  metric = rows[0]["metric_name"]
  for ax, size in zip(axes[0], sizes):
    at_size = [r for r in rows if r["batch_size"] == size and "decoder_ms_per_sample" in r]
    for mode in ("deed", "copy", "fixed", "static"):
      # DEED and copy as curves in threshold order (timing noise may fold them back a little).
      points = sorted(
        (r for r in at_size if r["exit_mode"] == mode),
        key=lambda r: (r["threshold"] or 0.0, r["fixed_exit_layer"] or 0),
      )
      if points:
        _plot_mode(ax, mode, points, calibrated)
    _zoom(ax, at_size)
    ax.set_xlabel("decoder latency (ms per sample)")
    ax.set_ylabel(f"{metric} (0-100)")
    ax.set_title(f"{metric} vs decoder latency, batch {size}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
  return _save(fig, path)


def _plot_mode(ax, mode: str, points: list[dict], calibrated: float | None) -> None:
  """One exit mode's points (a curve for DEED and copy), each DEED threshold and fixed k named."""
  style = _STYLE[mode]
  ax.plot(
    [r["decoder_ms_per_sample"] for r in points],
    [r["metric"] for r in points],
    linestyle="-" if mode in ("deed", "copy") else "none",
    label=_LABELS[mode],
    markersize=11 if mode == "static" else 6,
    **style,
  )
  for r in points:
    note = None
    if mode == "deed":
      note = f"{r['threshold']:g}"
    elif mode == "fixed":
      note = f"k={r['fixed_exit_layer']}"
    if note:
      ax.annotate(
        note,
        (r["decoder_ms_per_sample"], r["metric"]),
        textcoords="offset points",
        xytext=(4, -10 if mode == "fixed" else 5),
        fontsize=7,
        color=style["color"],
      )
  chosen = [r for r in points if mode == "deed" and r["threshold"] == calibrated]
  if calibrated is not None and chosen:
    ax.plot(
      [chosen[0]["decoder_ms_per_sample"]],
      [chosen[0]["metric"]],
      "o",
      markersize=15,
      markerfacecolor="none",
      markeredgecolor="tab:red",
      markeredgewidth=2,
      label=f"calibrated (tau={calibrated:g})",
    )


def _zoom(ax, rows: list[dict]) -> None:
  """Zoom on where the early-exit curves are; fixed exits far below are named instead."""
  bottom, top = metric_window(rows)
  hidden = [
    f"k={r['fixed_exit_layer']}: {r['metric']:.1f}"
    for r in rows
    if r["exit_mode"] == "fixed" and r["metric"] < bottom
  ]
  ax.set_ylim(bottom, top)
  if hidden:
    ax.text(
      0.01,
      0.01,
      "below the axis: fixed " + ", ".join(hidden),
      transform=ax.transAxes,
      fontsize=7,
      color=_STYLE["fixed"]["color"],
    )


def metric_per_layer(rows: Sequence[dict], num_layers: int, path: str) -> str:
  """The metric when every token exits at layer k (fixed exits; k = L is static)."""
  by_layer = {r["fixed_exit_layer"]: r["metric"] for r in rows if r["exit_mode"] == "fixed"}
  by_layer.update({num_layers: r["metric"] for r in rows if r["exit_mode"] == "static"})  # noqa: B035 (one static row)
  layers = sorted(by_layer)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  bars = ax.bar(layers, [by_layer[k] for k in layers], color="tab:gray")
  ax.bar_label(bars, fmt="%.1f", fontsize=8)
  ax.set_xticks(layers)
  ax.set_xlabel("exit layer k (every token from layer k; k = L is static)")
  metric = rows[0]["metric_name"]
  ax.set_ylabel(f"{metric} (0-100)")
  ax.set_ylim(0, max(100.0, max(by_layer.values()) * 1.08))
  ax.set_title(f"{metric} per exit layer")
  return _save(fig, path)


def exit_histogram(histograms: dict[str, Sequence[int]], path: str, title: str) -> str:
  """Share of emitted tokens per exit layer, one group of bars per setting ({name: [L] counts})."""
  names = list(histograms)
  num_layers = len(next(iter(histograms.values())))
  width = 0.8 / len(names)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  layers = np.arange(1, num_layers + 1)
  for index, name in enumerate(names):
    counts = np.asarray(histograms[name], np.float64)
    ax.bar(
      layers + (index - (len(names) - 1) / 2) * width,
      100 * counts / max(counts.sum(), 1),
      width,
      label=name,
    )
  ax.set_xticks(layers)
  ax.set_xlabel("exit layer")
  ax.set_ylabel("tokens (%)")
  ax.set_title(title)
  ax.legend(fontsize=8)
  return _save(fig, path)


def token_exits(
  examples: Sequence[tuple[Sequence[str], Sequence[int], str]],
  num_layers: int,
  path: str,
  title: str,
) -> str:
  """A few answers, each token in a box coloured by the layer it exited at.
  examples: (tokens as strings, their exit layers, the reference answer)."""
  cmap = plt.get_cmap("viridis", num_layers)
  width = max([len(tokens) for tokens, _, _ in examples] + [1])
  fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * width + 3.5), 0.55 * len(examples) + 1.4))
  for row, (tokens, layers, reference) in enumerate(examples):
    y = len(examples) - 1 - row
    for col, (token, layer) in enumerate(zip(tokens, layers)):
      ax.add_patch(
        plt.Rectangle((col, y + 0.1), 0.95, 0.8, color=cmap((layer - 1) / max(num_layers - 1, 1)))
      )
      ax.text(
        col + 0.47,
        y + 0.5,
        token.replace(" ", "\u2423"),
        ha="center",
        va="center",
        fontsize=9,
        color="white" if layer <= num_layers / 2 else "black",
        family="monospace",
      )
    ax.text(width + 0.3, y + 0.5, f"reference: {reference}", va="center", fontsize=8)
  ax.set_xlim(0, width + 3.2)
  ax.set_ylim(0, len(examples))
  ax.axis("off")
  mappable = matplotlib.cm.ScalarMappable(
    cmap=cmap, norm=matplotlib.colors.Normalize(0.5, num_layers + 0.5)
  )
  bar = fig.colorbar(mappable, ax=ax, ticks=range(1, num_layers + 1), fraction=0.04)
  bar.set_label("exit layer")
  ax.set_title(title)
  return _save(fig, path)
