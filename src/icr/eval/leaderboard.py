"""The leaderboard: the paper's Table 2 layout (LC and WR per language, then the averages) as
Markdown, CSV and a PNG, and results.json / results.csv with every metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from icr.core.io import write_json_atomic


def leaderboard_frame(table: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Rows = models (in evaluation order), columns = language × {LC, WR, n} plus Avg LC, Avg WR."""
    models = list(dict.fromkeys(table["model"]))
    rows = []
    for m in models:
        sub = table[table["model"] == m].set_index("lang")
        row: dict[str, Any] = {"model": m}
        for lang in languages:
            row[f"{lang} LC"] = sub.at[lang, "lc_win_rate"]
            row[f"{lang} WR"] = sub.at[lang, "win_rate"]
            row[f"{lang} n"] = int(sub.at[lang, "n_pairs"])  # judged pairs behind the WR
        # a language without LC holds None: numeric NaN makes the average n/a on every pandas
        row["Avg LC"] = pd.to_numeric(sub.loc[languages, "lc_win_rate"]).mean(skipna=False)
        row["Avg WR"] = pd.to_numeric(sub.loc[languages, "win_rate"]).mean(skipna=False)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def _fmt(value: float, suffix: str = "") -> str:
    return "n/a" if pd.isna(value) else f"{value:.1f}{suffix}"


def leaderboard_markdown(table: pd.DataFrame, meta: dict[str, Any]) -> str:
    """Table 2 layout (LC and WR per language, then the averages; n = judged pairs after each WR),
    then a detail table and the settings that produced it."""
    languages = meta["languages"]
    board = leaderboard_frame(table, languages)
    subset = any(str(s).startswith("subset") for s in table["lc_scope"])
    mark = "*" if subset else ""
    head = ["Model"] + [f"{lang} {c}" for lang in languages for c in ("LC", "WR")] + ["Avg LC", "Avg WR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, row in board.iterrows():
        cells = [str(model)]
        for lang in languages:
            cells += [_fmt(row[f"{lang} LC"], mark), f"{_fmt(row[f'{lang} WR'])} (n={int(row[f'{lang} n'])})"]
        cells += [_fmt(row["Avg LC"], mark), _fmt(row["Avg WR"])]
        lines.append("| " + " | ".join(cells) + " |")
    judge, judging = meta["judge"], meta["judging"]
    labels = judge.get("verdict_labels", "A/B")
    rules = {"logprobs": f"log-probabilities of {labels}", "sampled": "sampled verdict"}
    notes = [
        f"Judge: {judge['backend']} `{judge['model']}` (served as "
        f"{', '.join(f'`{m}`' for m in judging.get('served_models', [])) or '?'}); verdict rule: "
        f"{', '.join(rules.get(r, r) for r in judging.get('rules', [])) or 'n/a'}; prompt {judge['prompt_version']}; "
        f"order: {judging['order']}. Reference: {', '.join(meta['reference'])}.",
        "WR = win rate against the reference, ties as half; n = judged pairs. LC = alpaca_eval's "
        "length-controlled win rate.",
    ]
    if judge["backend"] != "alpaca_eval":
        notes.append(
            f"The {judge['backend']} judge uses icr's own A/B prompt: these numbers are not comparable "
            "with the paper's Table 2 (alpaca_eval's weighted_alpaca_eval_gpt4_turbo annotator; "
            "`--judge alpaca_eval`)."
        )
    if subset:
        notes.append(
            "\\* LC computed on a subset of the 805 instructions (--limit): the GLM is alpaca_eval's, "
            "but the numbers are not comparable with full-benchmark LC."
        )
    if meta.get("lc_unavailable"):
        notes.append(f"LC n/a: {meta['lc_unavailable']}")
    detail = [
        "| Model | Lang | n | W/L/T | invalid | WR ± SE | LC ± SE | LC scope | avg len | ref len | fidelity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        detail.append(
            f"| {r.model} | {r.lang} | {r.n_pairs} | {r.n_wins}/{r.n_losses}/{r.n_draws} | {r.n_invalid} | "
            f"{_fmt(r.win_rate)} ± {_fmt(r.standard_error)} | {_fmt(r.lc_win_rate)} ± "
            f"{_fmt(r.lc_standard_error)} | {r.lc_scope} | {r.avg_length:.0f} | {r.ref_avg_length:.0f} | "
            f"{_fmt(r.language_fidelity, '%')} |"
        )
    return "\n".join(["# X-AlpacaEval leaderboard", "", *lines, "", *notes, "", "## Details", "", *detail, ""])


def plot_leaderboard(table: pd.DataFrame, languages: list[str], path: Path) -> None:
    """Grouped bars: LC win rate (WR where LC is n/a) per language and on average, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    board = leaderboard_frame(table, languages)
    use_lc = not board[[f"{lang} LC" for lang in languages]].isna().any().any()
    kind = "LC" if use_lc else "WR"
    cols = [f"{lang} {kind}" for lang in languages] + [f"Avg {kind}"]
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(board))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols)), 4))
    for k, (model, row) in enumerate(board.iterrows()):
        ax.bar(x + (k - (len(board) - 1) / 2) * width, row[cols].astype(float).to_numpy(), width, label=str(model))
    ax.set_xticks(x, [*languages, "Avg"])
    ax.set_ylabel(f"{'length-controlled ' if use_lc else ''}win rate vs reference (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    ax.set_title("X-AlpacaEval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(table: pd.DataFrame, meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}  # NaN -> null
        for r in table.to_dict(orient="records")
    ]
    write_json_atomic(out / "results.json", {**meta, "results": records})
    table.to_csv(out / "results.csv", index=False)
    leaderboard_frame(table, meta["languages"]).round(4).to_csv(out / "leaderboard.csv")
    (out / "leaderboard.md").write_text(leaderboard_markdown(table, meta), encoding="utf-8")
    plot_leaderboard(table, meta["languages"], out / "leaderboard.png")
