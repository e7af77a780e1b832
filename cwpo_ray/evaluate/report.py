"""metrics.json (:class:`~cwpo_ray.results.EvaluateResult`) -> report.md and PNG plots (GRA bars with
CIs; gold-reward distributions)."""
from __future__ import annotations

import os

import numpy as np

from cwpo_ray.results import EvaluateResult

# ReportFiles field -> file name in the evaluate output folder
REPORT_FILES = {"report": "report.md", "gra_plot": "gra.png", "gold_plot": "gold_rewards.png"}


def plot_gra(metrics: EvaluateResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics.methods)
    g = np.array([metrics.methods[m].gra for m in names])
    lo = np.array([metrics.methods[m].gra_ci[0] for m in names])
    hi = np.array([metrics.methods[m].gra_ci[1] for m in names])
    t = np.array([metrics.methods[m].tie_rate for m in names])
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6))
    x = np.arange(len(names))
    ax.bar(x, g * 100, yerr=[(g - lo) * 100, (hi - g) * 100], capsize=5, color="#4C72B0", label="GRA (wins)")
    ax.bar(x, t * 100, bottom=g * 100, color="#CCCCCC", label="ties")
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, names)
    ax.set_ylabel("% of prompts (vs its SFT model)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Gold Reward Accuracy, {int(metrics.ci * 100)}% bootstrap CI (n={metrics.num_prompts})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gold(scores: dict[str, np.ndarray], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    allv = np.concatenate(list(scores.values()))
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 30)
    for name, v in scores.items():
        ax.hist(v, bins=bins, histtype="step", lw=1.6, label=f"{name} (mean {v.mean():.2f})")
    ax.set_xlabel("gold reward r*(x, y)")
    ax.set_ylabel("responses")
    ax.set_title("Gold reward of generated responses")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(metrics: EvaluateResult) -> str:
    ci = int(metrics.ci * 100)
    lim = metrics.length_limit_share
    lines = [
        "# Evaluation: Gold Reward Accuracy",
        "",
        f"- prompts: {metrics.num_prompts} (from `{metrics.prompts_path}`)",
        f"- gold reward: {metrics.gold}",
        f"- reference (SFT): `{metrics.sft_model}`; mean gold reward {metrics.mean_gold['sft']:.3f}",
        f"- sampling: {metrics.sampling}",
        f"- GRA = share of prompts where the method's response has a higher gold reward than the SFT "
        f"response (ties, |Δ| ≤ {metrics.tie_tolerance}, are not wins); {ci}% percentile bootstrap CIs "
        f"over prompts ({metrics.num_bootstrap} resamples).",
        f"- {metrics.samples_per_prompt} responses per prompt and model ({metrics.seeding} seeds); each "
        f"prompt's GRA is the share of its {metrics.samples_per_prompt} comparisons (sample j vs sample j) won.",
        f"- at the length limit ({metrics.sampling['max_new_tokens']} new tokens): SFT "
        f"{lim['sft']:.1%}; per method in the table.",
        "",
        f"| method | against | GRA | {ci}% CI | ties | losses | mean gain | {ci}% CI | mean gold | at length limit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.methods.items():
        ref = metrics.compare_to.get(name, "sft")
        lines.append(
            f"| {name} | {ref} ({lim[ref]:.1%} at limit) | {m.gra:.3f} | [{m.gra_ci[0]:.3f}, {m.gra_ci[1]:.3f}] | {m.tie_rate:.3f} | "
            f"{m.loss_rate:.3f} | {m.mean_gain:+.3f} | [{m.mean_gain_ci[0]:+.3f}, {m.mean_gain_ci[1]:+.3f}] | "
            f"{m.mean_gold_aligned:.3f} | {lim[name]:.1%} |")
    if metrics.methods_vs_common:
        lines += ["", "Every method against the common SFT model (`sft`), so that rows compare directly:", "",
                  f"| method | GRA | {ci}% CI | mean gain |", "|---|---|---|---|"]
        for name, m in metrics.methods.items():
            c = metrics.methods_vs_common.get(name, m)
            lines.append(f"| {name} | {c.gra:.3f} | [{c.gra_ci[0]:.3f}, {c.gra_ci[1]:.3f}] | {c.mean_gain:+.3f} |")
    lines += ["", "## Generation", "", "| model | path | backend | tokens | tok/s | finish |", "|---|---|---|---|---|---|"]
    for name, g in metrics.generation.items():
        lines.append(f"| {name} | `{g.model}` | {', '.join(g.backends)} | {g.generated_tokens} | "
                     f"{g.tokens_per_s} | {g.finish_reasons} |")
        if g.fallback_reasons:
            lines.append(f"|  | **HF fallback**: {'; '.join(g.fallback_reasons)} | | | | |")
    lines += ["", "![GRA](gra.png)", "", "![gold rewards](gold_rewards.png)", ""]
    return "\n".join(lines)


def write_report(metrics: EvaluateResult, scores: dict[str, np.ndarray], out_dir: str) -> dict[str, str]:
    """Write report.md, gra.png, gold_rewards.png into a local ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in REPORT_FILES.items()}
    if metrics.methods:
        plot_gra(metrics, paths["gra_plot"])
    plot_gold(scores, paths["gold_plot"])
    with open(paths["report"], "w") as f:
        f.write(markdown(metrics))
    return paths
