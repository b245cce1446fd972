"""The report's figures (matplotlib, headless). Each function takes loaded run data and returns a Figure.

Rates are drawn with their 95% Wilson intervals as bands and paired shifts with
their intervals as error bars: a line that moves inside its band is noise.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ppo_align.evaluation.results import EvalResults
from ppo_align.reporting.claims import BOUNDARY_SETS

# Behaviour rates drawn per set: (metric key, label).
RATES = (("over_refusal", "over-refusal (safe prompts refused)"),
         ("under_refusal", "under-refusal (harmful prompts answered)"),
         ("partial", "partial / hedged"))
TRAINING_CURVES = (("reward_mean", "reward"), ("kl", "KL to reference"), ("entropy", "entropy"), ("value_loss", "value loss"))


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def behaviour_vs_step(results: EvalResults, label: str = "") -> Figure:
    """Over-refusal, under-refusal and partial rate against PPO step, one panel per behaviour set."""
    sets = [s for s in results.data["evalsets"] if _behaviour_set(results, s)]
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(4.6 * max(len(sets), 1), 3.4), squeeze=False)
    x, xlabel = _positions(results)
    for ax, evalset in zip(axes[0], sets):
        for key, name in RATES:
            rows = [_row(results, t, evalset) for t in results.targets]
            points = [(x[r["target"]], r[key]) for r in rows if r and r[key]["n"]]
            if points:
                _band(ax, [s for s, _ in points], [v for _, v in points], name)
        ax.set_title(f"{label}{evalset}")
        _rate_axis(ax, xlabel)
        _target_ticks(ax, results)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def categories_vs_step(results: EvalResults) -> Figure:
    """Refusal rate per category against step, one panel per behaviour set (bands are 95% intervals)."""
    sets = [s for s in results.data["evalsets"] if _behaviour_set(results, s)]
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(5.2 * max(len(sets), 1), 3.8), squeeze=False)
    x, xlabel = _positions(results)
    for ax, evalset in zip(axes[0], sets):
        categories = sorted({r["category"] for r in results.data["metrics"] if r["set"] == evalset} - {"all"})
        for category in categories:
            rows = [_row(results, t, evalset, category) for t in results.targets]
            points = [(x[r["target"]], r["refusal"]) for r in rows if r and r["refusal"]["n"]]
            _band(ax, [s for s, _ in points], [v for _, v in points], category, alpha=0.08)
        ax.set_title(f"{evalset}: refusal by category")
        _rate_axis(ax, xlabel)
        _target_ticks(ax, results)
        ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def shift_by_category(results: EvalResults, target: str) -> Figure:
    """Change in refusal (points, with the paired 95% interval) per category, boundary vs clear-cut sets."""
    rows = [r for r in results.data["shifts"] if r["target"] == target and r["category"] != "all"
            and _behaviour_set(results, r["set"]) and r["refusal"]["delta"] is not None]
    rows.sort(key=lambda r: (r["set"] not in BOUNDARY_SETS, r["set"], r["refusal"]["delta"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * max(len(rows), 4) + 1.2))
    labels = [f"{r['set']} / {r['category']}" for r in rows]
    deltas = [100 * r["refusal"]["delta"] for r in rows]
    errors = [[100 * (r["refusal"]["delta"] - r["refusal"]["low"]) for r in rows],
              [100 * (r["refusal"]["high"] - r["refusal"]["delta"]) for r in rows]]
    colours = ["#c0392b" if r["set"] in BOUNDARY_SETS else "#7f8c8d" for r in rows]
    ax.barh(range(len(rows)), deltas, xerr=errors, color=colours, alpha=0.85, error_kw={"lw": 0.8})
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"change in refusal rate, points (reference → {target}); red: boundary, grey: clear-cut")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def selectivity_plane(results: EvalResults) -> Figure | None:
    """The trade-off plane: change in over-refusal (x) against change in under-refusal (y), reference → each
    checkpoint, per set with both safe and unsafe prompts, with paired 95% intervals on both axes. Selective
    training moves left and stays on or below the dotted +5 line; "refuse less" moves left and up."""

    def has_both(row: dict | None) -> bool:
        return bool(row) and all(row.get(k) and row[k]["n"] for k in ("over_refusal", "under_refusal"))

    sets = [s for s in results.data["evalsets"] if has_both(_row(results, results.targets[0], s))]
    steps = {t["name"]: t.get("step") for t in results.data["targets"][1:]}
    if not sets or not steps:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for evalset in sets:
        over = [results.shift(t, evalset)["over_refusal"] for t in steps]
        under = [results.shift(t, evalset)["under_refusal"] for t in steps]
        xs, ys = [100 * c["delta"] for c in over], [100 * c["delta"] for c in under]
        ax.errorbar(xs, ys, xerr=_spans(over), yerr=_spans(under), marker="o", ms=4, lw=1, capsize=2, label=evalset)
        for x, y, (name, step) in zip(xs, ys, steps.items()):
            ax.annotate(str(step if step is not None else name), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    _finish_selectivity_axes(ax, "selectivity: reference → checkpoint (labels: update)")
    fig.tight_layout()
    return fig


def runs_on_selectivity_plane(runs: dict[str, tuple[EvalResults, str]]) -> Figure | None:
    """Several runs on the selectivity plane: each run's reported checkpoint, one point per set with both safe
    and unsafe prompts (marker: set, colour: run), with paired 95% intervals. Recipes that differ in one knob
    (a harm penalty, say) trace the frontier between answering safe prompts and keeping unsafe ones refused."""
    points = []
    for name, (results, target) in runs.items():
        for evalset in results.data["evalsets"]:
            try:
                change = results.shift(target, evalset)
            except KeyError:
                continue
            if all((change.get(k) or {}).get("delta") is not None for k in ("over_refusal", "under_refusal")):
                points.append((name, evalset, change["over_refusal"], change["under_refusal"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = {name: f"C{i}" for i, name in enumerate(runs)}
    markers = {s: m for s, m in zip(dict.fromkeys(p[1] for p in points), "osD^v")}
    for name, evalset, over, under in points:
        ax.errorbar([100 * over["delta"]], [100 * under["delta"]], xerr=_spans([over]), yerr=_spans([under]),
                    marker=markers.get(evalset, "o"), ms=5, lw=1, capsize=2, color=colours[name])
    for name, colour in colours.items():
        ax.plot([], [], color=colour, lw=3, label=name)
    for evalset, marker in markers.items():
        ax.plot([], [], color="grey", marker=marker, ls="", label=evalset)
    _finish_selectivity_axes(ax, "selectivity: each run's reference → reported checkpoint")
    fig.tight_layout()
    return fig


def _finish_selectivity_axes(ax, title: str) -> None:
    """Axes, the +5-point under-refusal limit (dotted), labels and legend of a selectivity plane."""
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.axhline(5, color="black", lw=0.8, ls=":")
    ax.set_xlabel("Δ over-refusal, pts (safe prompts refused)")
    ax.set_ylabel("Δ under-refusal, pts (unsafe prompts answered)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def p_refuse_distribution(results: EvalResults, target: str) -> Figure | None:
    """Per-prompt P(refuse) from sampled responses, reference vs ``target``; None without ``--samples``."""
    ref, now = results.targets[0], target
    fig, axes = None, None
    sets = [s for s in results.data["evalsets"] if _behaviour_set(results, s)]
    sampled = [s for s in sets if any("p_refuse" in r for r in results.data["records"][ref].get(s, []))]
    if not sampled:
        return None
    fig, axes = plt.subplots(1, len(sampled), figsize=(4.6 * len(sampled), 3.2), squeeze=False)
    bins = [i / 10 for i in range(11)]
    for ax, evalset in zip(axes[0], sampled):
        for name, colour in ((ref, "#7f8c8d"), (now, "#c0392b")):
            values = [r["p_refuse"] for r in results.data["records"][name][evalset] if "p_refuse" in r]
            ax.hist(values, bins=bins, alpha=0.55, color=colour, label=name)
        ax.set_title(f"{evalset}: per-prompt P(refuse)")
        ax.set_xlabel("P(refuse) over sampled responses")
        ax.set_ylabel("prompts")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def knowledge_vs_step(results: EvalResults) -> Figure | None:
    sets = [s for s in results.data["evalsets"] if (_row(results, results.targets[0], s) or {}).get("exact_match")]
    if not sets:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x, xlabel = _positions(results)
    for evalset in sets:
        rows = [_row(results, t, evalset) for t in results.targets]
        points = [(x[r["target"]], r["exact_match"]) for r in rows if r and r.get("exact_match")]
        _band(ax, [s for s, _ in points], [v for _, v in points], f"{evalset} exact match")
    ax.set_title("knowledge (should stay flat)")
    _rate_axis(ax, xlabel)
    _target_ticks(ax, results)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_curves(runs: dict[str, list[dict]]) -> Figure | None:
    """Reward, KL, entropy and value loss (PPO only) per update from metrics.jsonl; one line per run."""
    if not any(runs.values()):
        return None
    fig, axes = plt.subplots(1, len(TRAINING_CURVES), figsize=(4 * len(TRAINING_CURVES), 3), squeeze=False)
    for ax, (key, name) in zip(axes[0], TRAINING_CURVES):
        for run, rows in runs.items():
            points = [(m["step"], m[key]) for m in rows if m.get(key) is not None]
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], lw=1.2, label=run)
        ax.set_title(name)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def reward_kl_tradeoff(points: dict[str, list[tuple[int, float, float]]]) -> Figure | None:
    """Training reward against KL at each checkpoint (step, KL, reward): the throttle and the brake."""
    if not any(points.values()):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for run, rows in points.items():
        ax.plot([k for _, k, _ in rows], [r for _, _, r in rows], marker="o", lw=1, label=run)
        for step, kl, reward in rows:
            ax.annotate(str(step), (kl, reward), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KL to reference (training, mean per response)")
    ax.set_ylabel("training reward (mean)")
    ax.set_title("reward vs KL by checkpoint (labels: update)")
    ax.grid(alpha=0.3)
    if len(points) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def reward_vs_judge(steps: list[int], reward: list[float | None], judged: list[float | None],
                    monitor: list[tuple[int, dict[str, float]]]) -> Figure | None:
    """The reward-hacking panel: training reward next to judged behaviour (independent only if the eval judge is not the reward's).

    ``judged``: share of eval prompts whose judged behaviour is the expected one, per checkpoint.
    Reward climbing while this stays flat means the policy is learning the reward, not the behaviour.
    """
    if not steps:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    pts = [(s, r) for s, r in zip(steps, reward) if r is not None]
    ax.plot([s for s, _ in pts], [r for _, r in pts], color="#2c3e50", marker="o", label="training reward")
    ax.set_xlabel("update")
    ax.set_ylabel("training reward", color="#2c3e50")
    right = ax.twinx()
    pts = [(s, j) for s, j in zip(steps, judged) if j is not None]
    right.plot([s for s, _ in pts], [100 * j for _, j in pts], color="#c0392b", marker="s", label="eval: judged as expected")
    for expected, style in (("refuse", ":"), ("comply", "--")):
        mon = [(s, rates[expected]) for s, rates in monitor if expected in rates]
        if mon:
            right.plot([s for s, _ in mon], [100 * v for _, v in mon], color="#e67e22", ls=style,
                       label=f"monitor: refusal on expected={expected}")
    right.set_ylabel("% of prompts", color="#c0392b")
    right.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    right.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="lower right")
    ax.set_title("training reward vs judged behaviour")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- helpers


def _row(results: EvalResults, target: str, evalset: str, category: str = "all") -> dict | None:
    try:
        return results.metric(target, evalset, category)
    except KeyError:
        return None


def _spans(changes: list[dict]) -> list[list[float]]:
    """Error-bar lengths below and above each paired change's delta, in points."""
    return [[100 * (c["delta"] - c["low"]) for c in changes], [100 * (c["high"] - c["delta"]) for c in changes]]


def _positions(results: EvalResults) -> tuple[dict[str, float], str]:
    """Where each target sits on the x axis: its update for a training run's checkpoints; its place in the
    list for targets without one (`eval --model --adapter`: adapters from anywhere)."""
    steps = {t["name"]: t.get("step") for t in results.data["targets"]}
    if all(step is not None for step in steps.values()):
        return steps, "update"
    return {name: i for i, name in enumerate(steps)}, "target"


def _target_ticks(ax, results: EvalResults) -> None:
    """Name the targets on the x axis when they have no update to stand for them."""
    if any(t.get("step") is None for t in results.data["targets"]):
        ax.set_xticks(range(len(results.targets)), results.targets, rotation=20, fontsize=7, ha="right")


def _behaviour_set(results: EvalResults, evalset: str) -> bool:
    row = _row(results, results.targets[0], evalset)
    return bool(row and (row["over_refusal"]["n"] or row["under_refusal"]["n"]))


def _band(ax, steps: list[int], rates: list[dict], label: str, alpha: float = 0.18) -> None:
    if not steps:
        return
    y = [100 * r["rate"] for r in rates]
    low = [100 * r["low"] if not math.isnan(r["low"]) else v for r, v in zip(rates, y)]
    high = [100 * r["high"] if not math.isnan(r["high"]) else v for r, v in zip(rates, y)]
    (line,) = ax.plot(steps, y, marker="o", ms=3, lw=1.3, label=label)
    ax.fill_between(steps, low, high, color=line.get_color(), alpha=alpha, lw=0)


def _rate_axis(ax, xlabel: str) -> None:
    ax.set_ylim(-2, 102)
    ax.set_ylabel("% of prompts")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
