"""The report as a document model (sections of tables, figures and flip lists), so the Markdown
and the HTML cannot say different things.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ppo_align.evaluation.results import HEADLINE, EvalResults, format_delta, format_p
from ppo_align.reporting import claims as claims_mod
from ppo_align.reporting import plots
from ppo_align.reporting.runs import RunData

# --------------------------------------------------------------------------- the document


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Flips:
    rows: list[dict]


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph) | Table | Figure | Flips


def document(runs: list[RunData]) -> tuple[str, list[Section]]:
    title = "ppo-align report: " + (runs[0].name if len(runs) == 1 else " vs ".join(r.name for r in runs))
    sections = [_comparison(runs)] if len(runs) > 1 else []
    for run in runs:
        sections += _run_sections(run, prefix=f"{run.name}: " if len(runs) > 1 else "")
    sections.append(_training_section(runs))
    return title, [s for s in sections if s.blocks]


def _run_sections(run: RunData, prefix: str) -> list[Section]:
    res, target = run.results, run.target
    overview = Section(f"{prefix}overview", [_overview(run), headline_table(res, target)])
    claim_rows = [[c.name, c.verdict.upper(), c.evidence] for c in run.claims()]
    verdicts = Section(f"{prefix}claims, checked", [
        "Each claim of the method as a test on this run's eval results (reference → "
        f"{target}); the evidence gives the numbers behind the verdict.",
        Table(["claim", "verdict", "evidence"], claim_rows)])
    agreement = res.data["judge"].get("reward_agreement")
    if agreement:
        verdicts.blocks += [
            f"How often the reward's judge ({res.data['judge']['reward_judge']}) gives this run's eval responses the "
            f"eval judge's label, per checkpoint: a fall means PPO learned what the reward's judge likes rather than "
            "what was asked.",
            Table(["target", "same label", "same refuse/comply", "kappa", "responses"],
                  [[t, f"{a['three_way']:.1%}", f"{a['binary']:.1%}", f"{a['kappa']:.2f}", str(a["n"])]
                   for t, a in agreement.items()])]
    figures = Section(f"{prefix}where behaviour moved")
    # "Independently judged" only when it is: the reward's own judge cannot show the reward being gamed.
    judged = "independently judged" if res.data["judge"].get("same_as_reward") is False else (
        "judged (by the reward's own judge)" if res.data["judge"].get("same_as_reward") else "judged")
    slug = slugify(run.name)
    for name, make, caption in (
        ("behaviour", lambda: plots.behaviour_vs_step(res),
         "Over-refusal, under-refusal and hedging against training update, per eval set (bands: 95% intervals)."),
        ("categories", lambda: plots.categories_vs_step(res), "Refusal rate per category against training update."),
        ("shift", lambda: plots.shift_by_category(res, target),
         f"Change in refusal per category, reference → {target}, with paired 95% intervals: "
         "PPO should move the ambiguous (boundary) categories most."),
        ("selectivity", lambda: plots.selectivity_plane(res),
         "Change in over-refusal against change in under-refusal at each checkpoint, with paired 95% intervals: "
         "a selective shift moves left without rising above the dotted +5-point line; moving left and up is "
         "refusing less, not telling safe from unsafe."),
        ("p-refuse", lambda: plots.p_refuse_distribution(res, target),
         f"Per-prompt P(refuse) over sampled responses, reference vs {target}: the distribution PPO re-weights."),
        ("knowledge", lambda: plots.knowledge_vs_step(res), "Knowledge exact match against training update (should stay flat)."),
        ("reward-vs-judge", lambda: plots.reward_vs_judge(
            [run.step_of(t) for t in res.targets[1:]],
            [_reward_at(run, run.step_of(t)) for t in res.targets[1:]],
            [run.judged_as_expected(t) for t in res.targets[1:]],
            [(m["step"], m["refusal"]) for m in run.monitor]),
         f"Training reward beside {judged} behaviour (eval sets) and the training-time monitor: "
         "reward rising while judged behaviour stays flat is reward hacking."),
    ):
        if name == "reward-vs-judge" and any(run.step_of(t) is None for t in res.targets[1:]):
            continue  # targets that are not checkpoints of a training run have no training reward to set beside
        fig = make()
        if fig is not None:
            figures.blocks.append(Figure(f"{slug}-{name}", plots.to_png(fig), caption))
    if not any(isinstance(b, Figure) and b.name.endswith("p-refuse") for b in figures.blocks):
        figures.blocks.append("Per-prompt P(refuse) needs sampled responses: `ppo-align eval RUN --samples 8`.")
    flipped = [f for f in res.data["flips"] if f["target"] == target]
    flips = Section(f"{prefix}prompts that flipped (reference → {target})", [
        _flip_summary(flipped),
        Flips(flipped)] if flipped else [
        f"No prompt changed between refusing and not refusing at {target}."])
    return [overview, verdicts, figures, flips]


def _overview(run: RunData) -> str:
    res = run.results.data
    judge = res["judge"]
    agreement = _gold_agreement(judge.get("gold") or {})
    sets = ", ".join(f"{name} ({s['n']} prompts)" for name, s in res["evalsets"].items())
    status = run.info.get("status", "unknown")
    best = run.info.get("best_checkpoint")
    parts = [
        f"Model {res['model'].get('source', '?')}; run status: {status}"
        + (f"; best checkpoint by the training-time rules: {best}" if best else "") + ".",
        f"Evaluated {', '.join(run.results.targets)} on {sets} (limit {res.get('limit') or 'none'}), "
        f"greedy, {res['generation'].get('max_new_tokens')} new tokens.",
        f"Judge: {judge['name']} v{judge['version']}" + (f", measured {agreement}." if agreement else "."),
        judge_independence(judge),
        f"Reported: reference → {run.target}.",
    ]
    return " ".join(p for p in parts if p)


def _gold_agreement(gold: dict) -> str:
    """The judge's measured quality on the held-out test split of its gold labels, beside the trivial baseline."""
    if "overall" not in gold:
        return ""
    o = gold["overall"]
    text = (f"on {gold['set']}, binary {o['binary']:.1%} (always one label: {o['baseline_binary']:.1%}), "
            f"refusal recall {_share(o['refusal_recall'])}, three-way {o['three_way']:.1%} "
            f"(always one label: {o['baseline_three_way']:.1%}), kappa {o['kappa']:.2f}, n = {o['n']}")
    trained = gold.get("subsets", {}).get("trained checkpoints (warm start, PPO)")
    if trained:
        text += (f"; on trained checkpoints' outputs binary {trained['binary']:.1%}, three-way "
                 f"{trained['three_way']:.1%} (n = {trained['n']})")
    return text


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def judge_independence(judge: dict) -> str:
    """Whether the eval judge is the reward's own judge, said plainly (empty when it is not known)."""
    if judge.get("same_as_reward"):
        return (f"The eval judge is also this run's reward ({judge['reward_judge']}): PPO was trained to please it, "
                "so these numbers cannot show PPO learning to satisfy the judge without doing what was asked; "
                "check the judge on this run's own outputs before trusting the headline.")
    if judge.get("same_as_reward") is False:
        return f"The eval judge is independent of the reward's judge ({judge['reward_judge']})."
    return ""


def headline_table(results: EvalResults, target: str) -> Table:
    rows = []
    reference = results.targets[0]
    for evalset in results.data["evalsets"]:
        ref, now = results.metric(reference, evalset), results.metric(target, evalset)
        shift = results.shift(target, evalset) if target != reference else {}
        for key, label, about in HEADLINE:
            if not ref.get(key) or not ref[key]["n"]:
                continue
            change = shift.get(key)
            rows.append([evalset, f"{label} ({about})", _rate(ref[key]), _rate(now[key]),
                         format_delta(change) if change else "", f"+{change['gained']}/−{change['lost']}" if change else "",
                         format_p(change["p_value"]) if change else ""])
        if now.get("kl") is not None and target != reference:
            rows.append([evalset, "KL to reference (per response, summed over its tokens)", "0", f"{now['kl']:.4f}", "", "", ""])
    return Table(["set", "metric", "reference", target, "change, pts [95% CI]", "flips +/−", "McNemar p"], rows)


def _comparison(runs: list[RunData]) -> Section:
    headers = ["run", "algorithm", "episodes/min", "reported", "boundary over-refusal", "refusal-set refusal",
               "knowledge EM", "claims passed"]
    rows = []
    for run in runs:
        res, t = run.results, run.target
        cells = [run.name, run.algorithm, str(run.info.get("episodes_per_minute", "–")), t]
        for evalset, key in (("boundary", "over_refusal"), ("refusal", "refusal"), ("knowledge", "exact_match")):
            try:
                ref, now = res.metric(res.targets[0], evalset)[key], res.metric(t, evalset)[key]
                cells.append(f"{_pct(ref)} → {_pct(now)}")
            except (KeyError, TypeError):
                cells.append("–")
        verdicts = [c.verdict for c in run.claims()]
        cells.append(f"{verdicts.count(claims_mod.PASS)} of {sum(v != claims_mod.NOT_APPLICABLE for v in verdicts)}")
        rows.append(cells)

    blocks: list = ["Each run's reference → reported checkpoint (its best by training-time rules, else its latest); "
                    "episodes/min is the RL stage's (behaviour checks and checkpoint writes included).",
                    Table(headers, rows), *_changes_across(runs)]
    plane = plots.runs_on_selectivity_plane({r.name: (r.results, r.target) for r in runs})
    if plane is not None:
        blocks.append(Figure("compare-selectivity", plots.to_png(plane),
                             "Each run's reported checkpoint on the selectivity plane (left: safe prompts answered "
                             "more; up: unsafe prompts answered more; dotted: the +5-point limit)."))
    tradeoff = plots.reward_kl_tradeoff({r.name: r.checkpoint_training() for r in runs})
    if tradeoff is not None:
        blocks.append(Figure("compare-reward-kl", plots.to_png(tradeoff),
                             "Reward against KL at each checkpoint, per run: reward is the throttle, KL the brake."))
    return Section("comparison", blocks)


# The changes compared across runs (seeds of one recipe, or recipes side by side): (set, metric key, label).
COMPARED_CHANGES = (
    ("boundary", "over_refusal", "boundary over-refusal"),
    ("minimal_pairs", "over_refusal", "minimal pairs over-refusal"),
    ("minimal_pairs", "under_refusal", "minimal pairs under-refusal"),
    ("minimal_pairs", "discrimination", "minimal pairs discrimination"),
    ("refusal", "refusal", "harmful refusal"),
    ("knowledge", "exact_match", "knowledge EM"),
)


def _changes_across(runs: list[RunData]) -> list:
    """Each run's paired change (pts, 95% interval) on the sets every run evaluated, and their mean and range:
    how much of a shift is the recipe and how much the seed."""
    columns = []
    for evalset, key, label in COMPARED_CHANGES:
        changes = []
        for run in runs:
            try:
                changes.append(run.results.shift(run.target, evalset)[key])
            except KeyError:
                break
        if len(changes) == len(runs) and all(changes):
            columns.append((label, changes))
    if not columns:
        return []
    rows = [[run.name, *(format_delta(changes[i]) for _, changes in columns)] for i, run in enumerate(runs)]
    deltas = [[100 * c["delta"] for c in changes] for _, changes in columns]
    rows.append(["mean [min, max]", *(f"{sum(d) / len(d):+.1f} [{min(d):+.1f}, {max(d):+.1f}]" for d in deltas)])
    return ["Change from each run's reference, pts [95% interval]; the last row spreads the point changes across "
            "the runs (seeds of one recipe: the seed's share of a shift).",
            Table(["run", *(label for label, _ in columns)], rows)]


def _training_section(runs: list[RunData]) -> Section:
    blocks = []
    curves = plots.training_curves({r.name: r.metrics for r in runs})
    if curves is not None:
        blocks.append(Figure("training-curves", plots.to_png(curves),
                             "Training curves from metrics.jsonl (value loss: PPO only)."))
    if len(runs) == 1:
        tradeoff = plots.reward_kl_tradeoff({runs[0].name: runs[0].checkpoint_training()})
        if tradeoff is not None:
            blocks.append(Figure("reward-kl", plots.to_png(tradeoff),
                                 "Training reward against KL at each checkpoint: reward is the throttle, KL the brake."))
    return Section("training", blocks)


def _flip_summary(flipped: list[dict]) -> Table:
    counts: dict[tuple[str, str], int] = {}
    for f in flipped:
        counts[(f["set"], f["direction"])] = counts.get((f["set"], f["direction"]), 0) + 1
    return Table(["set", "direction", "prompts"], [[s, d, str(n)] for (s, d), n in sorted(counts.items())])


def _reward_at(run: RunData, step: int) -> float | None:
    for s, _, reward in run.checkpoint_training():
        if s == step:
            return reward
    return None

# --------------------------------------------------------------------------- formatting


def slugify(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "run"


def short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+−-<")


def _pct(r: dict | None) -> str:
    return "–" if not r or not r["n"] else f"{100 * r['rate']:.0f}%"


def _rate(r: dict) -> str:
    if not r["n"]:
        return "–"
    return f"{100 * r['rate']:.0f}% [{100 * r['low']:.0f}–{100 * r['high']:.0f}] (n={r['n']})"
