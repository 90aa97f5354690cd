"""Regenerate the example figures in docs/figures/ from the embedded SmolLM2 (offline, ~1-2 min on 2 CPU cores).

Each figure is written as standalone HTML (build/figures/, not committed) and, when an image exporter is
available, as PNG (docs/figures/*.png, committed). PNG export uses kaleido >= 1 through ``fig.write_image``
when it works, else kaleido 0.2.1 (which bundles its own Chromium; ``pip install kaleido==0.2.1``, e.g. into a
separate folder on ``PYTHONPATH``) with plotly's own plotly.js.

Usage:
    python docs/make_figures.py            # all figures
    python docs/make_figures.py --no-png   # HTML only
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import plotly
import torch

import kn_lens
from kn_lens import plotting
from kn_lens.attribution import integrated_gradients_many
from kn_lens.cache import top_activating
from kn_lens.evaluation import intervention_effects
from kn_lens.lens import decode_many
from kn_lens.neurons import find_knowledge_neurons

OUT = Path(__file__).resolve().parent / "figures"
HTML = Path(__file__).resolve().parent.parent / "build" / "figures"

PARAPHRASES = [
    "The capital of France is",
    "France's capital city is",
    "The capital city of France is",
    "The French capital is",
]
OTHER_FACTS = [
    ("The capital of Italy is", " Rome"),
    ("The capital of Germany is", " Berlin"),
    ("The capital of Japan is", " Tokyo"),
    ("The capital of Spain is", " Madrid"),
]
TEXTS = [
    "Paris is the capital and largest city of France.",
    "Berlin became the capital of reunified Germany in 1990.",
    "The city council met in the town hall on Monday.",
    "Canberra was chosen as the capital as a compromise between Sydney and Melbourne.",
    "She poured a cup of green tea and opened her laptop.",
    "Tokyo, the capital of Japan, is one of the largest metropolitan areas in the world.",
    "The recipe calls for two eggs and a cup of flour.",
    "Ottawa is the capital city of Canada.",
    "He scored twice in the second half of the match.",
    "Many state capitals in the United States are not the largest city of their state.",
    "The river flows north through the valley.",
    "Madrid sits at the centre of the Iberian Peninsula.",
]


def _png_writer():
    """A function fig, path -> None writing a PNG, or None if no exporter works here."""
    probe = plotly.graph_objects.Figure()
    try:
        probe.to_image(format="png")

        def write(fig, path):
            fig.write_image(path, width=fig.layout.width or 1000, height=fig.layout.height or 600, scale=1.5)

        return write
    except Exception:
        pass
    try:
        from kaleido.scopes.plotly import PlotlyScope  # kaleido 0.2.1

        js = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
        scope = PlotlyScope(plotlyjs=js)

        def write(fig, path):
            png = scope.transform(
                fig.to_dict(), format="png", width=fig.layout.width or 1000, height=fig.layout.height or 600, scale=1.5
            )
            Path(path).write_bytes(png)

        return write
    except Exception as exc:  # pragma: no cover - depends on the machine
        print(f"no PNG exporter available ({exc}); writing HTML only")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-png", action="store_true", help="write HTML only")
    parser.add_argument("--only", nargs="*", default=None, help="figure names to make (default: all)")
    parser.add_argument("--recompute", action="store_true", help="recompute IG scores even if cached in build/")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    HTML.mkdir(parents=True, exist_ok=True)
    write_png = None if args.no_png else _png_writer()

    def want(*names: str) -> bool:
        return args.only is None or any(name in args.only for name in names)

    def emit(name: str, fig) -> None:
        if not want(name):
            return
        plotting.save(fig, HTML / f"{name}.html")
        if write_png is not None:
            write_png(fig, OUT / f"{name}.png")
        print("wrote", name)

    model = kn_lens.load_model()

    # 1-2. Integrated gradients for one fact over paraphrases; knowledge neurons by kn_lens's per-fact rule.
    cached = HTML / "ig_scores.pt"
    if cached.exists() and not args.recompute:
        scores = torch.load(cached)
    else:  # ~1 min per prompt on 2 busy CPU cores
        scores = integrated_gradients_many(model, PARAPHRASES, " Paris", progress=True)  # [prompt, layer, d_mlp]
        torch.save(scores, cached)
    mean = scores.mean(0)
    kns = find_knowledge_neurons(model, PARAPHRASES, " Paris", scores=scores)  # kn_lens's per-fact rule on these scores
    selected = list(kns.neurons)
    print("knowledge neurons:", selected)
    emit(
        "attribution_heatmap",
        plotting.attribution_heatmap(
            mean, top_k=12, neurons=selected, title="IG attribution, 'The capital of France is' -> ' Paris'"
        ),
    )
    emit(
        "attribution_heatmap_full",
        plotting.attribution_heatmap(
            mean, layers=range(18, 30), neurons=selected, title="IG attribution, layers 18-29, every neuron"
        ),
    )
    emit("layer_mass", plotting.layer_mass(mean, title="IG attribution mass per layer (France -> Paris)"))
    emit("knowledge_neurons", plotting.knowledge_neurons(kns))

    # 3. Interventions at the site (x0, x2) on this fact, beside random neurons of the same layers and other facts.
    if want("intervention_bars"):
        others = [kn_lens.make_prompt(model, t, y) for t, y in OTHER_FACTS]
        effects = intervention_effects(model, kns, unrelated=others, random_seeds=(0,))
        emit("intervention_bars", plotting.intervention_bars(effects, ylabel="p(correct answer)"))

    # 4. Lens table of the selected neurons (+ the capital neuron of DESIGN.md).
    lens_neurons = list(dict.fromkeys([*selected, kn_lens.Neuron(24, 1005)]))[:6]
    emit("lens_table", plotting.lens_table(decode_many(model, lens_neurons, k=8)))

    # 5. Where does the capital neuron L24N1005 fire? Strongly *negatively* on "The capital of France is" (about
    # -19), so it writes minus its value vector: its bottom tokens (' capitals', ' metropolis') are promoted.
    if want("activation_highlight"):
        top = top_activating(model, "L24N1005", TEXTS, k=6, largest=False, progress=False)
        emit("activation_highlight", plotting.activation_highlight(top, max_tokens=24))

    # 6. The tiny BERT fixture: its knowledge neurons for France -> Paris, read through the MLM head (the default
    # lens for encoders; "unembed" skips the head's dense + GELU and tracks BERT's behaviour poorly).
    if want("lens_table_bert"):
        from kn_lens.fixtures import tiny_bert

        bert = tiny_bert.load()
        fact = tiny_bert.FACTS[0]
        bert_kns = find_knowledge_neurons(bert, tiny_bert.train_prompts(fact), fact.answer)
        table = decode_many(bert, bert_kns.neurons, k=6)
        emit(
            "lens_table_bert",
            plotting.lens_table(
                table,
                title=f"Tiny BERT, knowledge neurons of {fact.subject} -> {fact.answer}<br><sup>value vectors "
                "through the MLM head (dense + GELU + LayerNorm), then W_U</sup>",
            ),
        )


if __name__ == "__main__":
    main()
