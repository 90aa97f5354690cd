# %% [markdown]
# # 1. Knowledge neurons in a tiny BERT
#
# Dai et al. (ACL 2022) asked: when BERT completes *"The capital of France is [MASK]."* with *Paris*, which
# neurons of its MLPs carry that fact? Their recipe, which kn_lens implements as TransformerLens hooks:
#
# 1. **Attribute**: for each MLP neuron, scale its activation at the `[MASK]` position from 0 up to its real
#    value and integrate the gradient of p(answer) along the way (integrated gradients, IG);
# 2. **Select**: keep neurons with a high score on most paraphrases of the fact (*knowledge neurons*);
# 3. **Test**: switch them off (x0) or amplify them (x2) and watch p(answer), next to controls: random neurons
#    and other facts must barely move.
#
# We use the tiny BERT that ships with kn_lens (2 layers, 1024 neurons per layer, trained on 48 synthetic facts),
# so everything runs in seconds on a laptop. Exercises along the way: write your answer in the cell marked
# *Your turn* (filled in here, in the solution notebook), then run the checker below it, which recomputes the
# right value from the model.

# %%
# On Colab (or wherever kn_lens is missing) install it; where it is installed (offline, CI) nothing happens.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("kn_lens") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "kn-lens[embedded] @ git+https://github.com/kn-lens/kn_lens"],
        check=True,
    )

# %%
import torch

import kn_lens
from kn_lens import hooks, quiz
from kn_lens.fixtures import tiny_bert

torch.manual_seed(0)
model = tiny_bert.load()
print(type(model).__name__, model.cfg.n_layers, "layers x", model.cfg.d_mlp, "neurons")

# %% [markdown]
# ## What does the model know?
# `make_prompt` finds the `[MASK]` (the *site*) and the answer's token id; `target_scores` reads p(answer).

# %%
fact = tiny_bert.FACTS[0]
prompts = tiny_bert.train_prompts(fact)
print(fact)
for text in prompts:
    p = kn_lens.target_scores(model, [kn_lens.make_prompt(model, text, fact.answer)]).item()
    print(f"{text:45s} p({fact.answer}) = {p:.3f}")

# %%
from kn_lens import top_predictions

top_predictions(model, prompts[0], k=5)

# %% [markdown]
# **Exercise 1.** Which token does the model rank first for the first prompt? (A string, e.g. `"Rome"`; read
# it from the table, as a program would: `top_predictions(...)` returns a DataFrame.)

# %% tags=["solution"]
top_token = top_predictions(model, prompts[0], k=1)["token"].iloc[0].strip("'").strip()

# %%
quiz.check("01.top-token", top_token, model=model, prompt=prompts[0])

# %% [markdown]
# ## Attribution: integrated gradients on `mlp_post`
# One row per layer, one column per neuron. `return_convergence_delta=True` also returns the completeness
# gap: the scores of a layer should add up to p(answer) minus p(answer with that layer's neurons at 0).

# %%
scores, delta = kn_lens.integrated_gradients(
    model, prompts[0], fact.answer, n_steps=50, method="gausslegendre", return_convergence_delta=True
)
print(scores.shape, "convergence delta per layer:", delta)

# %%
from kn_lens import plotting

plotting.attribution_heatmap(scores, top_k=20, title=f"IG attribution for {fact.answer!r}")

# %% [markdown]
# **Exercise 2.** Which neuron has the highest attribution? Answer as `kn_lens.Neuron(layer, index)`.

# %% tags=["solution"]
best_neuron = kn_lens.top_neurons(scores, 1)[0]  # row i of scores is layer i: the flat argmax as a neuron

# %%
quiz.check(
    "01.best-neuron",
    best_neuron,
    model=model,
    prompt=prompts[0],
    target=fact.answer,
    n_steps=50,
    method="gausslegendre",
)

# %% [markdown]
# ## Selecting knowledge neurons
# kn_lens's default rule (`variant="adaptive"`) uses Dai et al.'s numbers: per prompt keep neurons scoring above
# 0.2 x that prompt's maximum; keep the ones shared by more than 70% of the prompts; nudge that share by 0.05
# until 2 to 5 neurons remain, for this fact alone. `kns.params["rule"]` names the rule that ran.

# %%
kns = kn_lens.find_knowledge_neurons(model, prompts, fact.answer)
print(kns)
print(kns.params["rule"])
kns.to_dataframe()

# %% [markdown]
# Dai et al.'s *released code* (`variant="dai"`) differs in the details: a neuron must be coarse on at least 3
# prompts, and the share is adapted until the **average** over a whole relation's facts is 2 to 5, with no cap
# on any one fact. One fact on its own is its own relation. On the same scores (no new attribution):

# %%
released = kn_lens.find_knowledge_neurons(model, prompts, fact.answer, variant="dai", scores=kns.scores)
print(f"released rule: {len(released.neurons)} neurons, kn_lens's rule: {len(kns.neurons)}")

# %% [markdown]
# **Exercise 3.** How many knowledge neurons did the selection keep?

# %% tags=["solution"]
n_knowledge_neurons = len(kns.neurons)

# %%
quiz.check("01.kn-count", n_knowledge_neurons, model=model, prompts=prompts, target=fact.answer)

# %% [markdown]
# ## Testing them: suppress and enhance, with controls
# The hooks are plain TransformerLens `(hook_name, fn)` lists; `positions="site"` acts on the `[MASK]` only.
# `suppress` reports before/after probabilities for the fact and, as a control, for facts of other relations.

# %%
other = [f for f in tiny_bert.FACTS if f.relation != fact.relation][:6]
unrelated = [(tiny_bert.train_prompts(f), f.answer) for f in other]
table = kn_lens.suppress(model, kns, unrelated=unrelated)
table.groupby("condition")[["before", "after", "rel_change"]].mean()

# %%
control = kn_lens.random_neurons(model, like=kns.neurons, seed=0)
random_table = kn_lens.suppress(model, control, prompts, fact.answer)
print("knowledge neurons:", round(table[table.condition == table.condition.iloc[0]].rel_change.mean(), 3))
print("random neurons:   ", round(random_table.rel_change.mean(), 3))

# %% [markdown]
# **Exercise 4.** By what fraction does suppressing the knowledge neurons lower p(answer) on average? (A
# positive float: 0.5 for a 50% drop.)

# %% tags=["solution"]
drop = -table[table.condition == "knowledge neurons"].rel_change.mean()

# %%
quiz.check("01.suppression-drop", drop, model=model, neurons=kns.neurons, prompts=prompts, target=fact.answer)

# %% [markdown]
# ## Using the hooks directly
# Everything above is built from hooks you can use yourself, with `run_with_hooks` or `model.hooks(...)`.

# %%
prompt = kn_lens.make_prompt(model, prompts[0], fact.answer)
fwd_hooks = hooks.scale(kns.neurons, 0.0, positions="site", prompts=[prompt])
with model.hooks(fwd_hooks=fwd_hooks):
    logits = model(prompt.tokens[None])
print("p with hooks:", logits[0, prompt.site].softmax(-1)[prompt.target_ids[0]].item())
print("hooks left on the model afterwards:", kn_lens.attribution.attached_hooks(model))

# %% [markdown]
# ## Erasing a fact in the weights, reversibly
# `kn_lens.edit.erase` sets the knowledge neurons' value vectors (`W_out[layer][index]`) to zero. As a context
# manager it restores the weights bit for bit on exit, even if the body raises.

# %%
before = kn_lens.target_scores(model, [prompt]).item()
with kn_lens.edit.erase(model, kns.neurons):
    during = kn_lens.target_scores(model, [prompt]).item()
after = kn_lens.target_scores(model, [prompt]).item()
print(f"before {before:.3f}  erased {during:.3f}  restored {after:.3f}")
assert after == before

# %% [markdown]
# **Next**: tutorial 2 finds the *plural neuron* of the TransformerLens tutorial in the same tiny BERT.
