"""The hidden-state map: calibration h₀ by label and composition, the query's h₀ (and h̄₀
after MSAV), and each method's first tokens' trajectory, in 2-D.

The default view, `PROBE_AXIS`, is the one that shows harm: x is the probe's own score
s(h) = (h − m)·Cᵀw + b (its decision, P = 0.5, is the line x = 0) and y is the main direction
of what is left once the probe's direction is removed. On the built-in model the top two PCs
of h₀ separate *compositions* (text, typed phrase, photo), not harm: held-out AUROC 0.52
along PC 1 and 0.60 along PC 2, against 0.94 along x (`python -m safety_demo.eval.probe_report`).

The generic projections live in one dict, `PROJECTIONS` (PCA, t-SNE, UMAP); each maps x
[N, D] to [N, 2]. `fit_rows` says how many leading rows define the map:

  PCA     fitted on the calibration rows only, the query rows projected into it. The axes
          then depend on the calibration set alone, so every query, method and re-run is
          drawn in the same frame and can be compared; and the generated tokens' states
          (up to 3 × max_new_tokens rows) cannot take over the variance and hide the
          harmful/harmless split the probe relies on. Cost: distance off the calibration
          plane is invisible (a far-away point can land inside a cluster).
  t-SNE,  have no `transform`: fitted on calibration and query rows together (fit_rows is
  UMAP    ignored), so the layout changes with the query and only neighbourhoods mean
          anything. Both first reduce to ≤ 50 dims with PCA (standard, and much faster).

Results are cached per process (a small LRU keyed by a hash of the array, the method and
fit_rows), so re-rendering the same run is instant. `umap` is imported lazily: the first
import and the numba compilation take ~20 s, which `warm_up_umap()` pays at start-up.
"""
from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from threadpoolctl import threadpool_limits

from ..trace import Trace
from . import HARMFUL_COLOR, HARMLESS_COLOR, empty_figure, esc, method_color, style, top_margin

if TYPE_CHECKING:  # the map reads a probe's arrays only; viz does not import torch for it
    from ..probe import DecodingProbe

SEED = 0  # random_state of every projection
PRE_PCA_DIMS = 50  # t-SNE / UMAP input dims after a PCA pre-reduction
CACHE_SIZE = 16  # projections kept per process
TSNE_ITERATIONS = 500  # sklearn's 1000 costs ~10× more on 1k points (the late iterations are slow)
# OpenMP threads of t-SNE's gradient. One thread: on a busy CPU the threads spin-wait on each
# other (1000 points, 2 contended cores: 7–16 s with 2 threads, 2.4–3.5 s with 1).
TSNE_THREADS = 1

COMPOSITION_SYMBOLS = {"CB": "circle", "TYPO": "square", "FIGSTEP": "triangle-up", "NATURAL": "cross"}
LABEL_COLORS = {"harmful": HARMFUL_COLOR, "harmless": HARMLESS_COLOR}
H0_COLOR = "#ffd400"
HBAR_COLOR = "#2ca02c"


# ---- projections ------------------------------------------------------------------------
def _clean(x: np.ndarray) -> np.ndarray:
    """float64 copy with non-finite entries (float16 overflow) set to 0."""
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _pad2(y: np.ndarray) -> np.ndarray:
    """[N, ≤2] -> [N, 2] (zeros where there were fewer than two components)."""
    out = np.zeros((y.shape[0], 2))
    out[:, : y.shape[1]] = y[:, :2]
    return out


def pca_2d(x: np.ndarray, fit_rows: int | None = None) -> np.ndarray:
    """[N, D] -> [N, 2]: PCA fitted on the first `fit_rows` rows (all if None or < 3)."""
    from sklearn.decomposition import PCA

    x = _clean(x)
    fit = x[:fit_rows] if fit_rows is not None and fit_rows >= 3 else x
    k = min(2, fit.shape[0], x.shape[1])
    if k < 1 or fit.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    return _pad2(PCA(n_components=k, random_state=SEED).fit(fit).transform(x))


def _reduce(x: np.ndarray) -> np.ndarray:
    """PCA to ≤ PRE_PCA_DIMS dims before t-SNE / UMAP."""
    from sklearn.decomposition import PCA

    k = min(PRE_PCA_DIMS, x.shape[0] - 1, x.shape[1])
    if k >= x.shape[1] or k < 2:
        return x
    return PCA(n_components=k, random_state=SEED).fit_transform(x)


def tsne_2d(x: np.ndarray, fit_rows: int | None = None) -> np.ndarray:
    """[N, D] -> [N, 2]: t-SNE on all rows, perplexity min(30, (N − 1) / 3), 500 iterations; PCA if N < 5."""
    from sklearn.manifold import TSNE

    x = _clean(x)
    n = x.shape[0]
    if n < 5:
        return pca_2d(x)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=TSNE_ITERATIONS, random_state=SEED)
    reduced = _reduce(x)
    with threadpool_limits(limits=TSNE_THREADS):
        return tsne.fit_transform(reduced)


def umap_2d(x: np.ndarray, fit_rows: int | None = None) -> np.ndarray:
    """[N, D] -> [N, 2]: UMAP on all rows, n_neighbors min(15, N − 1); PCA if N < 5."""
    x = _clean(x)
    n = x.shape[0]
    if n < 5:
        return pca_2d(x)
    import umap  # lazy: ~20 s on first import (numba)

    neighbors = int(min(15, n - 1))
    init = "spectral" if n > 3 * neighbors else "random"  # spectral init is fragile on tiny sets
    reducer = umap.UMAP(n_components=2, n_neighbors=neighbors, min_dist=0.1, init=init, random_state=SEED, n_jobs=1)
    with warnings.catch_warnings():  # well-separated calibration clusters are expected here
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return np.asarray(reducer.fit_transform(_reduce(x)), dtype=np.float64)


PROJECTIONS: dict[str, Callable[..., np.ndarray]] = {"PCA": pca_2d, "t-SNE": tsne_2d, "UMAP": umap_2d}
AXIS_NAMES = {"PCA": "PC", "t-SNE": "t-SNE", "UMAP": "UMAP"}
PROBE_AXIS = "Probe axis"
VIEWS = (PROBE_AXIS, *PROJECTIONS)  # the map's choices, the default first
TRAJECTORY_STEPS = 8  # steps drawn per answer unless all are asked for: both methods steer the first 5 by default


def probe_direction(probe: DecodingProbe) -> np.ndarray:
    """d [D] with s(h) = (h − m)·d + b: the probe's PCA and weights folded into one direction."""
    return (probe.components.T @ probe.weight).astype(np.float64)


def probe_axes(x: np.ndarray, probe: DecodingProbe, fit_rows: int | None = None) -> np.ndarray:
    """[N, D] -> [N, 2]: x = the probe's logit s(h), y = PC 1 of the rest (h − m with the
    probe's direction removed), fitted on the first `fit_rows` rows like `pca_2d`."""
    x = _clean(x)
    d = probe_direction(probe)
    d /= max(np.linalg.norm(d), 1e-12)
    rest = x - probe.mean
    rest -= np.outer(rest @ d, d)
    return np.stack([probe.logit(x).astype(np.float64), pca_2d(rest, fit_rows)[:, 0]], axis=1)


class _LRU:
    """A small thread-safe LRU of projections (Gradio runs handlers in threads)."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_cache = _LRU(CACHE_SIZE)  # per-process cache of projections, the only module-level state


def project(x: np.ndarray, method: str = "PCA", fit_rows: int | None = None) -> np.ndarray:
    """`PROJECTIONS[method](x, fit_rows)`, cached by a hash of x, the method and fit_rows."""
    if method not in PROJECTIONS:
        raise ValueError(f"Unknown projection {method!r}; choose one of {list(PROJECTIONS)}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    key = (method, fit_rows, x.shape, hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest())
    hit = _cache.get(key)
    if hit is None:
        hit = np.asarray(PROJECTIONS[method](x, fit_rows), dtype=np.float64)
        _cache.put(key, hit)
    return hit.copy()


def warm_up_umap() -> float:
    """Import umap and compile its numba kernels on a tiny array; returns the seconds spent."""
    t0 = time.perf_counter()
    umap_2d(np.random.default_rng(SEED).normal(size=(40, 8)))
    return time.perf_counter() - t0


# ---- the map ------------------------------------------------------------------------------
def subsample(labels: Sequence[str], compositions: Sequence[str], max_points: int) -> np.ndarray:
    """Sorted indices of ≤ max_points rows, stratified by (label, composition), no randomness.

    Each group keeps its share (largest remainders round up, every group keeps ≥ 1 row when
    there is room); within a group, evenly spaced rows are kept.
    """
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(labels, compositions)):
        groups.setdefault(key, []).append(i)
    keys = sorted(groups)
    exact = {k: max_points * len(groups[k]) / n for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    if len(keys) <= max_points:
        for k in keys:
            quota[k] = max(quota[k], 1)
    for k in sorted(keys, key=lambda k: -(exact[k] - int(exact[k]))):
        if sum(quota.values()) >= max_points:
            break
        if quota[k] < len(groups[k]):
            quota[k] += 1
    while sum(quota.values()) > max_points:  # the ≥ 1 floors overshot: trim the largest group
        quota[max(keys, key=lambda k: quota[k])] -= 1
    keep = []
    for k in keys:
        rows = groups[k]
        picks = np.unique(np.linspace(0, len(rows) - 1, quota[k]).round().astype(int)) if quota[k] else []
        keep.extend(rows[p] for p in picks)
    return np.array(sorted(keep), dtype=np.int64)


def _label(value) -> str:
    """'harmful' / 'harmless' from strings, bools or 0/1."""
    if isinstance(value, str):
        return value
    return "harmful" if bool(value) else "harmless"


def _distinct(vectors: list[np.ndarray], tolerance: float = 0.02) -> list[int]:
    """Indices of the first of each group of nearly equal vectors (‖a − b‖ ≤ 2 % of ‖a‖).

    The methods share the query, but batching a second (noised) row in bf16 moves h₀ a
    little: such copies are one star, not three.
    """
    kept: list[int] = []
    for i, v in enumerate(vectors):
        same = lambda u: u.shape == v.shape and np.linalg.norm(u - v) <= tolerance * max(np.linalg.norm(u), 1e-6)
        if not any(same(vectors[j]) for j in kept):
            kept.append(i)
    return kept


def _score_line(score) -> str:
    return f"<br>P(harmful) = {float(score):.3f}" if score is not None else ""


def _h0_score(owner: Trace, all_traces) -> float | None:
    """P(harmful | h₀) from the owner, else from any trace (every trace of one request shares h₀)."""
    for t in (owner, *all_traces):
        if t.probe_h0 is not None:
            return float(t.probe_h0)
    return None


def _steered(trace: Trace) -> np.ndarray | None:
    h = trace.msav.h0bar if trace.msav is not None else None
    if h is None:
        return None
    h = np.asarray(h, dtype=np.float32).reshape(-1)
    return h if h.size else None


def hidden_state_map(
    calib_h: np.ndarray | None,
    calib_labels: Sequence,
    calib_compositions: Sequence[str],
    traces: dict[str, Trace],
    method: str = PROBE_AXIS,
    max_points: int = 600,
    probe: DecodingProbe | None = None,
    steps: int | None = TRAJECTORY_STEPS,
) -> go.Figure:
    """Calibration h₀ (colour = label, symbol = composition), the query's h₀ (★), h̄₀ (◆, with
    an arrow from h₀) when MSAV fired, and one numbered line per method through its first
    `steps` tokens' states (None: every token).

    calib_h [N, D]; calib_labels [N] ("harmful"/"harmless" or 1/0); calib_compositions [N]
    (CB / TYPO / FIGSTEP / NATURAL); traces: name -> Trace. `method` is one of VIEWS; the
    probe axis needs `probe` and falls back to PCA, saying so, without one. Calibration is
    subsampled to `max_points` deterministically. A trace whose hidden size differs from the
    calibration's is left out and named in an annotation.
    """
    if method not in VIEWS:
        raise ValueError(f"Unknown projection {method!r}; choose one of {list(VIEWS)}.")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1 (or None for every step), got {steps}.")
    calib_h = np.zeros((0, 0), np.float32) if calib_h is None else np.asarray(calib_h)
    labels = [_label(v) for v in calib_labels]
    comps = [str(c) for c in calib_compositions]
    if not (len(labels) == len(comps) == calib_h.shape[0]):
        raise ValueError(
            "calib_h, calib_labels and calib_compositions must have the same length, "
            f"got {calib_h.shape[0]}, {len(labels)}, {len(comps)}."
        )
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}.")
    keep = subsample(labels, comps, max_points)
    calib = calib_h[keep].astype(np.float32)
    labels, comps = [labels[i] for i in keep], [comps[i] for i in keep]

    # Which hidden size the map is in: the calibration's, else the first trace's h₀.
    dims = calib.shape[1] if len(calib) else next((t.prefill_hidden.size for t in traces.values() if t.prefill_hidden.size), 0)
    usable = {n: t for n, t in traces.items() if t.prefill_hidden.size == dims}
    skipped = [n for n in traces if n not in usable]
    lines = []
    if method == PROBE_AXIS and (probe is None or probe.mean.shape[0] != dims):
        method, lines = "PCA", ["No probe for this model's hidden states: PCA shown instead."]

    # Query rows: distinct h₀s, distinct h̄₀s, then each method's first `steps` tokens.
    h0_owner = list(usable)
    h0s = [usable[n].prefill_hidden.astype(np.float32) for n in h0_owner]
    h0_pick = _distinct(h0s) if h0s else []
    bars = [(n, _steered(t)) for n, t in usable.items()]
    bars = [(n, h) for n, h in bars if h is not None and h.size == dims]
    bar_pick = _distinct([h for _, h in bars])
    paths = {n: t for n, t in usable.items() if len(t) and t.hidden.shape[0] == len(t) and t.hidden.shape[1] == dims}
    shown = {n: len(t) if steps is None else min(steps, len(t)) for n, t in paths.items()}

    blocks = [calib, *(h0s[i][None] for i in h0_pick), *(bars[i][1][None] for i in bar_pick)]
    blocks += [t.hidden[: shown[n]].astype(np.float32) for n, t in paths.items()]
    blocks = [b for b in blocks if b.size]
    if not blocks or dims == 0:
        return empty_figure("Hidden-state map", "Nothing to map yet: no calibration states and no run with hidden states.")
    x = np.concatenate(blocks, axis=0)
    fit_rows = len(calib) if len(calib) >= 3 else None
    xy = probe_axes(x, probe, fit_rows) if method == PROBE_AXIS else project(x, method, fit_rows if method == "PCA" else None)

    fig = go.Figure()
    at = _add_calibration(fig, xy[: len(calib)], labels, comps)
    at = _add_query(fig, xy, at, h0_pick, h0_owner, bar_pick, bars, usable)
    _add_paths(fig, xy, at, paths, shown)
    _frame(fig, method, lines, len(keep), len(calib_h), shown, paths, skipped, dims)
    return fig


def _add_calibration(fig: go.Figure, cal_xy: np.ndarray, labels: list[str], comps: list[str]) -> int:
    """One scatter per (label, composition), grouped by label in the legend; returns the rows used."""
    order = [c for c in COMPOSITION_SYMBOLS if c in comps] + sorted(set(comps) - set(COMPOSITION_SYMBOLS))
    for label in [l for l in LABEL_COLORS if l in labels] + sorted(set(labels) - set(LABEL_COLORS)):
        first = True
        for comp in order:
            mask = np.array([l == label and c == comp for l, c in zip(labels, comps)], dtype=bool)
            if not mask.any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=cal_xy[mask, 0], y=cal_xy[mask, 1], mode="markers", name=f"{label} · {comp}",
                    legendgroup=label, legendgrouptitle_text=f"calibration: {label}" if first else None,
                    marker=dict(
                        color=LABEL_COLORS.get(label, "#999"), symbol=COMPOSITION_SYMBOLS.get(comp, "circle-open"),
                        size=7, opacity=0.45, line=dict(width=0),
                    ),
                    hovertemplate=f"calibration<br>{label} · {comp}<extra></extra>",
                )
            )
            first = False
    return len(cal_xy)


def _add_query(fig: go.Figure, xy: np.ndarray, at: int, h0_pick, h0_owner, bar_pick, bars, usable) -> int:
    """The query's h₀ (a star) and, after MSAV, h̄₀ (a diamond) with an arrow from h₀."""
    h0_xy = xy[at : at + len(h0_pick)]
    at += len(h0_pick)
    for row, i in zip(h0_xy, h0_pick):
        score = _h0_score(usable[h0_owner[i]], usable.values())
        fig.add_trace(
            go.Scatter(
                x=[row[0]], y=[row[1]], mode="markers", legendgroup="query",
                name="h₀ (query, prefill)" if i == h0_pick[0] else f"h₀ ({h0_owner[i]})",
                legendgrouptitle_text="this query" if i == h0_pick[0] else None,
                marker=dict(symbol="star", size=22, color=H0_COLOR, line=dict(width=1.5, color="#222")),
                hovertemplate="h₀: last prompt position at prefill" + _score_line(score) + "<extra></extra>",
            )
        )
    bar_xy = xy[at : at + len(bar_pick)]
    at += len(bar_pick)
    for row, i in zip(bar_xy, bar_pick):
        name, _ = bars[i]
        msav = usable[name].msav
        score = msav.h0bar_score if msav is not None else None
        fig.add_trace(
            go.Scatter(
                x=[row[0]], y=[row[1]], mode="markers", name="h̄₀ (after MSAV)", legendgroup="query",
                marker=dict(symbol="diamond", size=17, color=HBAR_COLOR, line=dict(width=1.5, color="#222")),
                hovertemplate=f"h̄₀ = h₀ + α·μ ({esc(name)}'s MSAV)" + _score_line(score) + "<extra></extra>",
            )
        )
        if len(h0_xy):
            fig.add_annotation(
                x=row[0], y=row[1], ax=h0_xy[0][0], ay=h0_xy[0][1], xref="x", yref="y", axref="x", ayref="y",
                showarrow=True, arrowhead=3, arrowsize=1.3, arrowwidth=2, arrowcolor=HBAR_COLOR, text="", standoff=8, startstandoff=10,
            )
    return at


def _add_paths(fig: go.Figure, xy: np.ndarray, at: int, paths: dict[str, Trace], shown: dict[str, int]) -> None:
    """Each method's first tokens: a line through their states, numbered, with hover text."""
    for index, (name, t) in enumerate(paths.items()):
        n = shown[name]
        path = xy[at : at + n]
        at += n
        probe = t.scores.get("probe.score")
        hover = [
            f"<b>{esc(name)}</b> · step {i}<br>token {esc(repr(tok))} ({action})"
            + (f"<br>P(harmful) = {float(probe[i]):.3f}" if probe is not None and np.isfinite(probe[i]) else "")
            for i, (tok, action) in enumerate(zip(t.tokens[:n], t.actions[:n]))
        ]
        color = method_color(t.method, index)
        fig.add_trace(
            go.Scatter(
                x=path[:, 0], y=path[:, 1], mode="lines+markers+text", name=f"{name} tokens", legendgroup="methods",
                legendgrouptitle_text="answers (first steps)" if index == 0 else None,
                line=dict(color=color, width=2),
                marker=dict(  # a dot at the first token, then arrows along the answer
                    symbol=["circle"] + ["arrow"] * (n - 1), angleref="previous", size=[11] + [9] * (n - 1), color=color,
                ),
                text=[str(i) for i in range(n)], textposition="top center", textfont=dict(size=10, color=color),
                hovertext=hover, hoverinfo="text",
            )
        )


def _frame(fig: go.Figure, method: str, lines: list[str], kept: int, total: int, shown: dict[str, int], paths: dict[str, Trace], skipped: list[str], dims: int) -> None:
    """Axes, the probe's decision line, the subtitle (what the axes mean, what is left out)."""
    if method == PROBE_AXIS:
        lines += ["x: the probe's score s; dashed line: its decision (P = 0.5)", "y: the main direction of what is left"]
        fig.add_vline(x=0, line=dict(color="#555", dash="dash", width=1))
        for side, anchor, text in ((-1, "right", "← reads harmless "), (1, "left", " reads as harm →")):
            fig.add_annotation(x=0, y=1, xref="x", yref="paper", xanchor=anchor, yanchor="top", text=text, showarrow=False,
                               bgcolor="rgba(255,255,255,0.8)", font=dict(size=11, color=HARMFUL_COLOR if side > 0 else HARMLESS_COLOR))
        fig.update_xaxes(title="probe score s = log-odds of P(harmful)", zeroline=False)
        fig.update_yaxes(title="main direction of the rest", zeroline=False)
    else:
        lines[:0] = (["PCA fitted on the calibration set; the query is projected in"] if method == "PCA"
                     else [f"{method} of calibration + query together:", "neighbours matter, distances and axes do not"])
        fig.update_xaxes(title=f"{AXIS_NAMES[method]} 1", zeroline=False)
        fig.update_yaxes(title=f"{AXIS_NAMES[method]} 2", zeroline=False)
    cut = [n for n in paths if shown[n] < len(paths[n])]
    if cut:
        lines.append(f"first {max(shown.values())} steps of each answer (tick 'every step' for all)")
    if kept < total:
        lines.append(f"{kept} of {total} calibration points (stratified)")
    if skipped:
        fig.add_annotation(
            text=f"Not shown (hidden size ≠ {dims}): {', '.join(skipped)}", xref="paper", yref="paper", x=0, y=1,
            xanchor="left", yanchor="bottom", showarrow=False, font=dict(size=11, color="#a00"),
        )
    subtitle = "<br>".join(lines)
    # the legend goes under the plot: on a phone a legend at the side would leave no room for it
    style(
        fig, f"Hidden-state map ({method})", subtitle, height=620,
        legend=dict(font=dict(size=11), groupclick="toggleitem", tracegroupgap=6, itemsizing="constant",
                    orientation="h", yref="container", yanchor="bottom", y=0, xanchor="left", x=0),
    )
    fig.update_layout(margin=dict(l=55, r=10, t=top_margin(subtitle), b=40))
