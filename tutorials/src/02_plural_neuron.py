# %% [markdown]
# # 2. The plural neuron
#
# The TransformerLens lesson on BERT shows a neuron, L9 N1094 of `bert-base-cased`, that pushes plural
# determiners: in *"Raymond is selling [MASK] sketches."* switching it off at the `[MASK]` makes *these* and
# *those* less likely. (Niu et al., ICLR 2024, found a singular partner, L10 N2096.) This notebook follows that
# lesson step for step, then asks two questions the lesson leaves open: would attribution have found the neuron,
# and is it the only one doing the job?
#
# **Which model?** With the Hugging Face hub (Colab) the cells run on `bert-base-cased` and neuron L9 N1094.
# Offline (CI, a laptop without network) the same cells run on the tiny BERT bundled with kn_lens (2 layers,
# trained on determiner-noun agreement among other things), with the neuron kn_lens finds for the job.
#
# Exercises: write your answer in the cell marked *Your turn* (filled in here, in the solution notebook), then
# run the checker below it, which recomputes the right value from the model.

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
import pandas as pd
import torch

import kn_lens
from kn_lens import Neuron, hooks, lens, plotting, quiz
from kn_lens.fixtures import tiny_bert

# The plural sentences of the tiny BERT's training set: also good English for bert-base-cased.
plural = [a for a in tiny_bert.AGREEMENT["train"] if a.plural]
singular = [a for a in tiny_bert.AGREEMENT["train"] if not a.plural]
plural_prompts = [a.prompt for a in plural if "these" in a.answers][:12]

try:
    model = kn_lens.load_model("bert-base-cased")
    neuron = Neuron(9, 1094)  # the lesson's neuron
    print("Loaded bert-base-cased from the hub: the lesson's neuron", neuron)
except Exception as err:  # no hub: no network, or HF_HUB_OFFLINE=1
    print(f"bert-base-cased is not available here ({type(err).__name__}); using the tiny BERT bundled with kn_lens.")
    model = tiny_bert.load()
    # The tiny BERT has no L9: take the neuron with the highest attribution to "these" on plural sentences.
    found = kn_lens.find_knowledge_neurons(model, plural_prompts, "these")
    neuron = max(found.neurons, key=lambda n: float(found.neuron_scores(n).mean()))
    print("Its plural neuron, found by integrated gradients:", neuron)

# %% [markdown]
# ## The sentence and the mask
# The lesson's sentence; the `[MASK]` is token 4 (`[CLS]` is token 0).

# %%
sentence = "Raymond is selling [MASK] sketches."
tokens = kn_lens.make_prompt(model, sentence).tokens[None]  # [1, pos]: [CLS] ... [SEP], on either backend
mask_index = 4
print(model.tokenizer.convert_ids_to_tokens(tokens[0].tolist()))
assert int(tokens[0, mask_index]) == model.tokenizer.mask_token_id

determiners = ["this", "that", "these", "those", "the", "some"]
determiner_ids = model.tokenizer.convert_tokens_to_ids(determiners)

# %% [markdown]
# ## Original probabilities

# %%
with torch.no_grad():
    logits = model(tokens)
original = logits[0, mask_index].softmax(-1)[determiner_ids]
pd.Series(original.numpy(), index=determiners, name="original")

# %% [markdown]
# ## Suppressing the neuron at the mask
# The lesson's hook: set the neuron's activation (`mlp.hook_post` of its layer) to zero at the mask position
# only, run the model with it, compare.


# %%
def suppress_neuron(value, hook):
    value[:, mask_index, neuron.index] = 0.0
    return value


with torch.no_grad():
    suppressed_logits = model.run_with_hooks(
        tokens, fwd_hooks=[(f"blocks.{neuron.layer}.mlp.hook_post", suppress_neuron)]
    )
suppressed = suppressed_logits[0, mask_index].softmax(-1)[determiner_ids]
table = pd.DataFrame({"original": original.numpy(), "suppressed": suppressed.numpy()}, index=determiners)
table["change"] = table.suppressed - table.original
table

# %% [markdown]
# The same intervention with kn_lens: `hooks.scale` builds that hook (any neurons, any positions), and
# `kn_lens.compare` makes the table in one call.

# %%
with torch.no_grad(), model.hooks(fwd_hooks=hooks.scale([neuron], 0.0, positions=[mask_index])):
    again = model(tokens)[0, mask_index].softmax(-1)[determiner_ids]
assert torch.allclose(again, suppressed)
kn_lens.compare(
    model, sentence, determiners, {f"{neuron} x0": hooks.Intervention("scale", [neuron], 0.0, positions="site")}
)

# %% [markdown]
# **Exercise 1 (the lesson's quiz).** How much did the probability of *these* change when the neuron was
# suppressed? (suppressed minus original, a float; negative for a drop.)

# %% tags=["solution"]
these_change = float(table.loc["these", "change"])

# %%
quiz.check("02.determiner-change", these_change, model=model, neuron=neuron, sentence=sentence, determiner="these")

# %% [markdown]
# ## Attribution is not causation
# Would attribution have picked this neuron? Integrated gradients on p(*these*) over plural sentences ranks
# every neuron. A high attribution says the neuron's activation *contributes* to p(these) along the path from
# zero; only the intervention says what switching it off *does*. Compare the two for the top-ranked neurons.

# %%
kns = kn_lens.find_knowledge_neurons(model, plural_prompts, "these")
print(kns)
rows = []
for n in kns.neurons:
    after = kn_lens.compare(
        model, sentence, ["these"], {"x0": hooks.Intervention("scale", [n], 0.0, positions="site")}
    ).loc["these"]
    rows.append(
        dict(neuron=str(n), attribution=float(kns.neuron_scores(n).mean()), effect=after["x0"] - after["clean"])
    )
ranking = pd.DataFrame(rows).sort_values("attribution", ascending=False)
ranking

# %% [markdown]
# **Exercise 2.** Among the selected neurons, which one lowers p(*these*) the most when switched off alone?
# (Answer as a string like `"L1N253"`.)

# %% tags=["solution"]
most_causal = ranking.sort_values("effect").neuron.iloc[0]

# %%
quiz.check("02.most-causal", most_causal, model=model, neurons=kns.neurons, sentence=sentence, determiner="these")

# %% [markdown]
# ## Several neurons share the job
# Switching off one neuron, then all the selected ones, against the same number of random neurons of the same
# layers.

# %%
control = kn_lens.random_neurons(model, like=kns.neurons, seed=1)
shared = kn_lens.compare(
    model,
    sentence,
    determiners,
    {
        f"{neuron} x0": hooks.Intervention("scale", [neuron], 0.0, positions="site"),
        f"all {len(kns.neurons)} x0": hooks.Intervention("scale", kns.neurons, 0.0, positions="site"),
        "random x0": hooks.Intervention("scale", control, 0.0, positions="site"),
    },
)
shared

# %% [markdown]
# **Exercise 3.** With all the selected neurons switched off, by what fraction does the total probability of
# *these*, *those* and *some* change? (e.g. -0.3 for a 30% drop.)

# %% tags=["solution"]
plural_rows = shared.loc[["these", "those", "some"]]
plural_change = float(plural_rows[f"all {len(kns.neurons)} x0"].sum() / plural_rows["clean"].sum() - 1)

# %%
quiz.check(
    "02.plural-mass-change",
    plural_change,
    model=model,
    neurons=kns.neurons,
    sentence=sentence,
    plural=["these", "those", "some"],
)

# %% [markdown]
# ## Reading the value vector
# A neuron adds `activation x W_out[layer][index]` to the residual stream. Pushing that vector through BERT's MLM
# head (dense + GELU + LayerNorm, then the unembedding) shows which tokens it promotes and suppresses.

# %%
decoded = lens.decode(model, neuron, k=8, through="mlm_head")
plotting.lens_table(decoded.to_frame(), title=f"What {neuron} writes (through the MLM head)")

# %% [markdown]
# ## Where does it fire?
# `top_activating` runs sentences through the model and keeps the ones where the neuron peaks.

# %%
texts = [a.prompt for a in plural[:15] + singular[:15]]
top = kn_lens.top_activating(model, neuron, texts, k=6, progress=False)
plotting.activation_highlight(top)

# %% [markdown]
# **Exercise 4.** What fraction of the 6 top texts are plural sentences? (A float.)

# %% tags=["solution"]
plural_texts = {a.prompt for a in plural}
share_plural = sum(t in plural_texts for t in top.texts) / len(top.texts)

# %%
quiz.check(
    "02.fires-on-plural", share_plural, model=model, neuron=neuron, texts=texts, plural=[a.prompt for a in plural]
)

# %% [markdown]
# **What this shows.** One intervention at one position is the lesson's evidence for "a plural neuron", and
# it is a good experiment: it is causal. But the neuron with the highest attribution need not be the one with
# the largest effect (exercise 2), and in a small model the job is spread over several neurons, each doing a
# little (exercise 3). "The X neuron" is a claim to test model by model, with a random control beside it.
#
# **Next**: tutorial 3 moves to a real language model, SmolLM2.
