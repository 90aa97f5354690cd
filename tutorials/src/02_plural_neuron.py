# %% [markdown]
# # 2. The plural neuron
#
# The TransformerLens tutorial on BERT shows a neuron (L9 N1094 in bert-base-cased) that pushes plural
# determiners: in *"Raymond is selling [MASK] sketches."* switching it off at the `[MASK]` makes *these*/*those*
# less likely. Niu et al. (ICLR 2024) found a singular partner (L10 N2096). This tutorial finds the same kind of
# neuron in kn_lens' tiny BERT, from scratch, and checks what it does three ways: by intervention, by reading its
# value vector through the vocabulary (logit lens), and by where it fires. (Spoiler: in a model this small the
# job is shared by several neurons, which the interventions make visible.)
#
# With the hub, run the same cells on `kn_lens.load_model("bert-base-cased")` and neuron `"L9N1094"`.

# %%
import kn_lens
from kn_lens import hooks, lens, plotting
from kn_lens.fixtures import tiny_bert
from kn_lens.quiz import Question, close_to, equals

model = tiny_bert.load()
plural = [a for a in tiny_bert.AGREEMENT["train"] if a.plural]
singular = [a for a in tiny_bert.AGREEMENT["train"] if not a.plural]
sentence = "Raymond is selling [MASK] sketches."
candidates = ["these", "those", "some", "a", "this", "that"]
kn_lens.compare(model, sentence, candidates)

# %%
q1 = Question(
    "plural-choice",
    f"Which of {candidates} does the model prefer in {sentence!r}?",
    equals(kn_lens.compare(model, sentence, candidates)["clean"].idxmax()),
    hint="idxmax of the 'clean' column",
)
q1.check(kn_lens.compare(model, sentence, candidates)["clean"].idxmax())

# %% [markdown]
# ## Finding the neuron
# Treat "plural determiner" like a fact: attribute p(*these*) on many plural sentences and keep the neurons
# most of them share.

# %%
plural_prompts = [a.prompt for a in plural if "these" in a.answers][:12]
kns = kn_lens.find_knowledge_neurons(model, plural_prompts, "these")
print(kns)
neuron = max(kns.neurons, key=lambda n: float(kns.neuron_scores(n).mean()))
print("strongest:", neuron)

# %% [markdown]
# ## Intervening at the `[MASK]`
# The TransformerLens tutorial's table, in one call: candidate probabilities without and with the neuron
# switched off (and, as a control, a random neuron of the same layer).

# %%
control = kn_lens.random_neurons(model, like=[neuron], seed=1)
table = kn_lens.compare(
    model,
    sentence,
    candidates,
    {
        f"{neuron} x0": hooks.Intervention("scale", [neuron], 0.0, positions="site"),
        f"{control[0]} x0 (random)": hooks.Intervention("scale", control, 0.0, positions="site"),
    },
)
table

# %% [markdown]
# In bert-base-cased one neuron moves these/those a lot. In this tiny model the effect of the strongest single
# neuron is small: number agreement is spread over several neurons (a reminder that "the X neuron" is an empirical
# claim to test, model by model). Switching off the whole selected set shows the combined effect.

# %%
kn_lens.compare(
    model,
    sentence,
    candidates,
    {
        f"all {len(kns.neurons)} x0": hooks.Intervention("scale", kns.neurons, 0.0, positions="site"),
        "random x0": hooks.Intervention("scale", kn_lens.random_neurons(model, like=kns.neurons, seed=1), 0.0),
    },
)

# %%
plural_mass = table.loc[["these", "those", "some"]]
change = float(plural_mass.iloc[:, 1].sum() / plural_mass["clean"].sum() - 1)
q2 = Question(
    "plural-drop",
    "By what fraction does switching the neuron off change the total probability of these/those/some? "
    "(e.g. -0.3 for a 30% drop)",
    close_to(change, rel=0.05, abs_=0.02),
)
q2.check(round(change, 2))

# %% [markdown]
# ## Reading the value vector
# A neuron adds `activation x W_out[layer][index]` to the residual stream. Pushing that vector through BERT's MLM
# head (dense + GELU + LayerNorm, then the unembedding) shows which tokens it promotes and suppresses.

# %%
decoded = lens.decode(model, neuron, k=8, through="mlm_head")
plotting.lens_table(decoded.to_frame(), title=f"What {neuron} writes (through the MLM head)")

# %%
q3 = Question(
    "lens",
    "Is 'these' among the 8 tokens the neuron promotes most? (True/False)",
    equals("these" in [t.strip() for t in decoded.top_tokens]),
)
q3.check("these" in [t.strip() for t in decoded.top_tokens])

# %% [markdown]
# ## Where does it fire?
# `top_activating` runs sentences through the model and keeps the ones where the neuron peaks.

# %%
texts = [a.prompt for a in plural[:15] + singular[:15]]
top = kn_lens.top_activating(model, neuron, texts, k=6, progress=False)
plotting.activation_highlight(top)

# %%
plural_texts = {a.prompt for a in plural}
share_plural = sum(t in plural_texts for t in top.texts) / len(top.texts)
q4 = Question("fires-on", "What fraction of the 6 top texts are plural sentences?", close_to(share_plural))
q4.check(share_plural)
