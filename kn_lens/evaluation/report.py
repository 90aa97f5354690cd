"""One self-contained HTML page of a PARAREL run: coverage, effects with controls, neurons, convergence, erase/edit.

The page opens in any browser without a server or internet (plotly.js is inlined once). Every effect is shown
beside its controls and every table states how many facts it rests on; facts the model does not know are listed.

Example:
    ``write_report("runs/smollm2")`` writes ``runs/smollm2/report.html``; here for a finished run of the tiny
    BERT (``run_dir``), into a folder of its own:

    >>> from kn_lens.evaluation.report import write_report
    >>> page = write_report(run_dir, tmp_path / "report.html")
    >>> text = page.read_text()
    >>> text.startswith("<!DOCTYPE html>"), "kn_lens report: tiny-bert" in text
    (True, True)
    >>> import re
    >>> re.findall(r"<h2>(.*?)</h2>", text)
    ['Run', 'Coverage', 'Suppress (x0) and enhance (x2), with controls', 'Neurons', 'Convergence of the integral',
     'Erasing a relation', 'Editing facts']
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from kn_lens._typing import Neuron
from kn_lens.evaluation.convergence import convergence_summary
from kn_lens.evaluation.records import records_frame, relation_table, rule_summary
from kn_lens.evaluation.sweeps import (
    SweepError,
    coverage,
    read_convergence,
    read_known,
    read_manifest,
    read_records,
    read_relations,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 14px; max-width: 60em; }
details { margin: .5em 0 1.5em; }
"""


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p class='note'>(nothing yet)</p>"
    return frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="", border=0, escape=True)


class _Figures:
    """Inline plotly figures; plotly.js goes into the first one only."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, default_height=None)
        self.first = False
        return out


def _run_files(run: Path) -> tuple[list[dict], pd.DataFrame, list[dict]]:
    """Records, known facts and relation results of a run, each checked (a file of another schema is named)."""
    try:
        records = read_records(run)
        records_frame(records)  # checks every record
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        if isinstance(err, SweepError):
            raise
        why = f"a record lacks the key {err}" if isinstance(err, KeyError) else str(err)
        raise SweepError(f"{run / 'records.jsonl'} holds records of another schema: {why}") from None
    known = read_known(run)
    if not all(isinstance(k, dict) and {"relation", "uuid", "known"} <= k.keys() for k in known):
        raise SweepError(f"{run / 'known.jsonl'} holds rows of another schema (each needs relation, uuid, known)")
    relations = read_relations(run)
    if not all(isinstance(r, dict) and "kind" in r and isinstance(r.get("rows", []), list) for r in relations):
        raise SweepError(f"{run / 'relations.jsonl'} holds rows of another schema (each needs kind and rows)")
    return records, pd.DataFrame(known), relations


def build_report(run: str | os.PathLike) -> str:
    """The HTML text of the report of a run folder (see :func:`write_report`)."""
    import plotly.graph_objects as go

    from kn_lens import plotting

    run = Path(run)
    manifest = read_manifest(run)  # a folder of another tool (or none) is refused here
    rules = list(manifest.get("rules") or {})
    records, known, relations = _run_files(run)
    figure = _Figures()
    parts = [f"<h1>Knowledge neurons on PARAREL: {html.escape(str(manifest.get('model')))}</h1>"]
    settings = {k: manifest.get(k) for k in ("model", "model_config", "relations", "facts_per_relation", "seed",
                                              "attribution", "n_heldout", "n_controls", "selection", "known_rule",
                                              "versions")}  # fmt: skip
    parts.append("<h2>Run</h2>" + _table(pd.DataFrame([{"setting": k, "value": json.dumps(v)}
                                                         for k, v in settings.items()])))  # fmt: skip
    parts.append("<h3>Selection rules</h3>" + _table(pd.DataFrame(
        [{"rule": k, "what it does": v} for k, v in (manifest.get("rules") or {}).items()])))  # fmt: skip

    parts.append("<h2>Coverage</h2>")
    parts.append(
        "<p class='note'>Each relation's facts are shuffled by the run's seed and scanned until enough known ones "
        "are found (a uniform sample of the known facts); a fact is known when "
        f"{html.escape(str(manifest.get('known_rule')))}. Every number below is computed on known facts only; "
        "effect tables leave out the facts for which a rule found no knowledge neuron "
        "(<code>no neurons</code>: nothing to intervene on).</p>"
    )
    if not known.empty:
        cov = coverage(run)
        cov.insert(3, "coverage_%", 100 * cov["known"] / cov["scanned"].where(cov["scanned"] > 0))
        parts.append(_table(cov))
        unknown = known[~known["known"].astype(bool)]
        parts.append(f"<details><summary>{len(unknown)} facts the model does not know</summary>"
                     f"{_table(unknown)}</details>")  # fmt: skip

    frame = records_frame(records)
    parts.append("<h2>Suppress (x0) and enhance (x2), with controls</h2>")
    parts.append(
        "<p class='note'>Per relation: the fact's own prompts (knowledge neurons), held-out paraphrases, other "
        "facts of the same relation, facts of other relations, and the same number of random neurons in the same "
        "layers. <code>rel_change_%</code> is the mean of per-prompt relative changes (Dai et al.), "
        "<code>rel_of_means_%</code> the relative change of the mean probability; specificity = 1 - same-relation "
        "change / own change (1: only the fact moves; 0: the whole relation moves as much).</p>"
    )
    if not frame.empty:
        table = relation_table(frame)
        parts.append("<h3>Per rule, all relations</h3>" + _table(rule_summary(table)))
        for rule in dict.fromkeys(table["rule"]):
            part = table[table["rule"] == rule]
            parts.append(f"<h3>Rule {html.escape(str(rule))}</h3>")
            parts.append(figure(plotting.relation_effects(part.drop(columns="rule"))))
            for name in dict.fromkeys(part["intervention"]):
                parts.append(f"<h4>{html.escape(name)}</h4>" + _table(part[part["intervention"] == name]))

        n_layers = manifest.get("model_config", {}).get("n_layers") or 1
        layer_fig, count_fig = go.Figure(), go.Figure()
        tops = []
        for rule in rules or [None]:
            mine = [r for r in records if rule is None or r.get("rule") == rule]
            neurons = [n for r in mine for n in r.get("neurons") or ()]
            layers = Counter(Neuron.parse(n).layer for n in neurons)
            layer_fig.add_bar(x=list(range(n_layers)), y=[layers.get(i, 0) for i in range(n_layers)], name=rule)
            counts = Counter(len(r.get("neurons") or ()) for r in mine)
            mean = sum(k * v for k, v in counts.items()) / max(sum(counts.values()), 1)
            count_fig.add_bar(x=sorted(counts), y=[counts[k] for k in sorted(counts)], name=f"{rule} (mean {mean:.2f})")
            tops += [dict(rule=rule, neuron=n, facts=c) for n, c in Counter(neurons).most_common(10)]
        layer_fig.update_layout(title="Layer of the selected knowledge neurons", xaxis_title="layer",
                                yaxis_title="neurons", template="plotly_white", height=350)  # fmt: skip
        parts.append("<h2>Neurons</h2>" + figure(layer_fig))
        count_fig.update_layout(title="Knowledge neurons per fact (Dai et al. ~4.13 on BERT)", xaxis_title="neurons",
                                yaxis_title="facts", template="plotly_white", height=350)  # fmt: skip
        parts.append(figure(count_fig))
        parts.append("<h3>Most frequent neurons</h3>" + _table(pd.DataFrame(tops)))

    parts += _convergence_section(records, read_convergence(run), figure)

    erase_rows = [row for r in relations if r["kind"] == "erase" for row in r["rows"]]
    parts.append("<h2>Erasing a relation</h2>")
    parts.append(
        "<p class='note'>The relation's most frequent knowledge neurons are erased (value vectors set to zero or "
        "to the [UNK] embedding), beside as many random neurons in the same layers. Answer perplexity on the "
        "relation vs other relations, and (causal models) perplexity of a held-out text.</p>"
    )
    parts.append(_table(pd.DataFrame(erase_rows)))
    edit_rows = [dict(uuid=r["uuid"], **row) for r in relations if r["kind"] == "edit" for row in r["rows"]]
    parts.append("<h2>Editing facts</h2>")
    parts.append(
        "<p class='note'>Dai et al.'s edit (W_out += -E(old) + 8 E(new)) on the fact's neurons, beside the same "
        "update on as many random active neurons: success (new answer top-1), paraphrase success, neighbourhood "
        "(other facts of the relation keep their answer), perplexity of held-out text.</p>"
    )
    edits = pd.DataFrame(edit_rows)
    if not edits.empty:
        cols = [c for c in ("success", "paraphrase_success", "neighbourhood_after", "ppl_after") if c in edits]
        parts.append("<h3>Mean over edited facts</h3>" + _table(edits.groupby("neurons")[cols].mean().reset_index()))
    parts.append("<details><summary>Every edit</summary>" + _table(edits) + "</details>")
    body = "\n".join(parts)
    title = html.escape(f"kn_lens report: {manifest.get('model')}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style>"
            f"</head><body>\n{body}\n</body></html>\n")  # fmt: skip


def _convergence_section(records: list[dict], rows: list[dict], figure: _Figures) -> list[str]:
    """Each fact's completeness error (from the run) and, when measured, the neuron sets' stability across rules."""
    import plotly.graph_objects as go

    parts = ["<h2>Convergence of the integral</h2>"]
    parts.append(
        "<p class='note'>Completeness error of a prompt: how far its integrated-gradient scores miss "
        "F(clean) - F(baseline), pooled over layers (sum |delta| / sum |change|; 0 for an exact integral). A "
        "fact's error is the mean over its prompts. Small errors are necessary, not sufficient: single neurons' "
        "errors can cancel. The stability table re-selects facts' neurons with other quadrature rules and compares "
        "them with a fine reference (Jaccard of the sets; largest score error / largest reference score).</p>"
    )
    first_rule = next((r.get("rule") for r in records), None)
    facts = [r for r in records if r.get("completeness") and r.get("rule") == first_rule]
    per_fact = pd.DataFrame(
        dict(relation=[r["relation"] for r in facts], fact=[r["uuid"] for r in facts],
             error=[sum(r["completeness"]) / len(r["completeness"]) for r in facts])
    )  # fmt: skip
    if per_fact.empty:
        parts.append("<p>This run's records carry no completeness errors (a run made before kn_lens recorded them, "
                     "or an attribution other than integrated gradients).</p>")  # fmt: skip
    else:
        table = per_fact.groupby("relation", sort=False)["error"].describe(percentiles=[0.5])
        table = table.rename(columns={"count": "facts", "50%": "median"})[["facts", "mean", "median", "min", "max"]]
        parts.append(_table((table * [1, 100, 100, 100, 100]).round(2).reset_index().rename(
            columns={c: f"{c} %" for c in ("mean", "median", "min", "max")})))  # fmt: skip
        fig = go.Figure(go.Histogram(x=100 * per_fact["error"], nbinsx=40))
        fig.update_layout(title="Completeness error per fact (%)", xaxis_title="error %", yaxis_title="facts",
                          template="plotly_white", height=330)  # fmt: skip
        parts.append(figure(fig))
    if rows:
        frame = pd.DataFrame(rows)
        parts.append(f"<h3>Stability across quadrature rules ({frame['fact'].nunique()} facts)</h3>")
        parts.append(_table(convergence_summary(frame)))
        parts.append("<details><summary>Every fact and rule</summary>" + _table(frame) + "</details>")
    else:
        parts.append("<p>Stability across quadrature rules: not measured for this run "
                     "(<code>kn-lens evaluate convergence RUN</code> adds it).</p>")  # fmt: skip
    return parts


def write_report(run: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of a run folder (default ``RUN/report.html``) and return its path.

    Example:
        >>> path = write_report(run_dir, tmp_path / "tiny-bert.html")
        >>> path.name, path.stat().st_size > 10_000
        ('tiny-bert.html', True)
    """
    if not isinstance(run, str | os.PathLike):
        raise TypeError(f"run must be the path of a run folder, got {type(run).__name__}")
    path = Path(output) if output else Path(run) / "report.html"
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give the HTML file to write, e.g. {path / 'report.html'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of output {path} does not exist; create it first")
    path.write_text(build_report(run), encoding="utf-8")
    return path


__all__ = [
    "build_report",
    "write_report",
]
