"""Ctrl-C anywhere: a KeyboardInterrupt raised at every line, one run per line, leaves no hook on the model, no
edited weight and no changed grad mode behind (issue: "Interrupts").

Each test first counts the line events of one run, then runs it again once per event ``n`` with a trace function
that raises ``KeyboardInterrupt`` at the ``n``-th, and checks the model after every run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import pytest
import torch

import kn_lens
from kn_lens.edit import applied_edits, edit_fact, erase, restore_all

# The code that adds and removes hooks, writes weights and switches grad mode: kn_lens, TransformerLens' hook
# machinery (adding hooks, and removing them from the hook points that carry some), contextlib, torch's
# grad-mode managers and hook handles. Not the arithmetic of the forward pass, whose lines all sit inside the
# guarded regions, nor TransformerLens' loop over every hook point: both would only make the sweep slow.
MACHINERY = re.compile(r"(kn_lens/|HookedRootModule\.py|contextlib\.py|grad_mode\.py|torch/utils/hooks\.py)")
SKIPPED = {"remove_all_hook_fns", "forward", "full_hook"}
HOOK_REGISTRATION = {"register_forward_hook", "register_full_backward_hook", "add_hook"}


def _machinery(frame) -> bool:
    code = frame.f_code
    if code.co_name in SKIPPED:
        return False
    if code.co_name in HOOK_REGISTRATION:
        return True
    if code.co_name in ("remove_hooks", "_remove_hooks"):  # only where there is something to remove
        point = frame.f_locals.get("self")
        return bool(frame.f_locals.get("handles") or getattr(point, "fwd_hooks", None))
    return bool(MACHINERY.search(code.co_filename))


WHERE: list = []
STACK: list = []


def _frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def _tracer(files: Callable | None, counter: list[int], raise_at: int | None) -> Callable:
    def local(frame, event, arg):
        if event == "line":
            counter[0] += 1
            if counter[0] == raise_at:
                WHERE[:] = [frame.f_code.co_filename, frame.f_code.co_name, frame.f_lineno]
                STACK[:] = [(f.f_code.co_name, f.f_lineno) for f in _frames(frame)]
                raise KeyboardInterrupt
        return local

    def call(frame, event, arg):
        return local if files is None or files(frame) else None

    return call


def _interrupt_everywhere(run: Callable[[], object], check: Callable[[int], None], files=None, stride=1) -> int:
    """Run ``run`` once per line event (every ``stride``-th), raising KeyboardInterrupt there; ``check`` after each."""
    run()  # once untraced: first calls do one-time work (regex compilation, caches) later runs skip
    total = _count_events(run, files)
    assert total > 0
    for n in range(1, total + 1, stride):
        counter = [0]
        sys.settrace(_tracer(files, counter, n))
        try:
            run()
        except KeyboardInterrupt:
            pass
        else:
            # A TransformerBridge may cache a little of its own state after an interrupted call, so a whole run
            # can end a few events earlier than the first one counted: accept that at the very end only.
            now = _count_events(run, files)
            if not (now < n and n > 0.99 * total):
                raise AssertionError(f"line event {n} of {total} was not reached (a whole run now has {now})")
            check(n)
            break
        finally:
            sys.settrace(None)
        check(n)
    return total


def _count_events(run: Callable[[], object], files) -> int:
    counter = [0]
    sys.settrace(_tracer(files, counter, None))
    try:
        run()
    finally:
        sys.settrace(None)
    return counter[0]


def _w_out(model):
    return [block.mlp.W_out.detach().clone() for block in model.blocks]


def _same(model, weights) -> bool:
    return all(torch.equal(block.mlp.W_out, w) for block, w in zip(model.blocks, weights, strict=True))


def _no_hooks(model) -> bool:
    points = model.hook_dict.values()
    return (
        all(not p.fwd_hooks and not p.bwd_hooks for p in points)
        and all(not p._forward_hooks and not p._backward_hooks for p in points)
        and model.context_level == 0
    )


# ------------------------------------------------------------------------------------------------ weight edits


NEURONS = ["L0N3", "L1N5", "L2N7"]  # three layers: an interrupt between layers must not leave a layer behind


def _out_of_reach(where: list) -> bool:
    """The two points where CPython runs none of a context manager's code: the ``with`` line as the block ends
    (the call of ``__exit__`` is being set up) and the first line of ``__exit__`` (nothing of it has run)."""
    _file, function, line = where
    return function == "run" or (function == "__exit__" and line == EXIT_FIRST_LINE)


_EXIT = kn_lens.edit.WeightEdit.__exit__.__code__
EXIT_FIRST_LINE = min(line for *_, line in _EXIT.co_lines() if line and line > _EXIT.co_firstlineno)


def _edits_checked(model, original, n, out_of_reach: list) -> None:
    """The weights are the originals; or, after an interrupt out of any code's reach, the edits are applied as a
    whole, listed, and restore_all puts every row back."""
    if not _same(model, original):
        assert _out_of_reach(WHERE), f"W_out left changed by an interrupt at line event {n}: {WHERE}"
        assert applied_edits(model), f"an edited model with no edit listed, interrupt at line event {n}: {WHERE}"
        out_of_reach.append(n)
        restore_all(model)
    assert _same(model, original), f"W_out left changed by an interrupt at line event {n}: {WHERE}"
    assert not applied_edits(model), n
    assert torch.is_grad_enabled(), f"grad mode left off by an interrupt at line event {n}: {WHERE}"


@pytest.mark.parametrize(
    "make",
    [
        lambda model: erase(model, NEURONS),
        lambda model: erase(model, NEURONS, mode="unk"),
        lambda model: edit_fact(model, NEURONS, " Paris", " Rome"),
    ],
    ids=["erase", "erase-unk", "edit_fact"],
)
def test_an_interrupt_anywhere_in_a_with_edit_leaves_the_weights_and_grad_mode(random_gpt2, make):
    model = random_gpt2
    original = _w_out(model)
    out_of_reach: list[int] = []

    def run():
        with make(model):
            inside = model.cfg.n_layers  # a statement (a bare `pass` compiles to a NOP outside the with's handler)
        return inside

    total = _interrupt_everywhere(run, lambda n: _edits_checked(model, original, n, out_of_reach))
    assert total > 100
    assert len(out_of_reach) <= 2, out_of_reach  # the with line at its end, the entry of __exit__


def test_an_interrupt_in_a_permanent_edit_or_its_restore_is_all_or_nothing(random_gpt2):
    """Interrupted while applying: nothing changed; after it or while restoring: either restored, or still applied
    as a whole and listed (then restore_all puts it all back)."""
    model = random_gpt2
    original = _w_out(model)
    with edit_fact(model, NEURONS, " Paris", " Rome"):
        edited = _w_out(model)

    def run():
        edit = edit_fact(model, NEURONS, " Paris", " Rome")
        edit.restore()

    def check(n):
        if not _same(model, original):
            assert _same(model, edited), f"W_out half edited by an interrupt at line event {n}: {WHERE}"
            assert len(applied_edits(model)) == 1, n
            restore_all(model)
        assert _same(model, original) and not applied_edits(model), n
        assert torch.is_grad_enabled()

    _interrupt_everywhere(run, check)


def test_nested_edits_of_one_neuron_under_interrupts(random_gpt2):
    model = random_gpt2
    original = _w_out(model)
    out_of_reach: list[int] = []

    def run():
        with erase(model, NEURONS[:2]), edit_fact(model, NEURONS[1:], " Paris", " Rome"):
            inside = model.cfg.n_layers
        return inside

    _interrupt_everywhere(run, lambda n: _edits_checked(model, original, n, out_of_reach))
    assert len(out_of_reach) <= 4, out_of_reach


def test_two_permanent_edits_of_one_neuron_must_be_restored_newest_first(random_gpt2):
    """Restored oldest first, the older edit put back rows the newer one had replaced: W_out ended changed."""
    model = random_gpt2
    original = _w_out(model)
    first = erase(model, NEURONS[:2])
    second = edit_fact(model, NEURONS[1:], " Paris", " Rome")
    with pytest.raises(ValueError, match="restore that one first"):
        first.restore()
    assert first.applied and second.applied
    second.restore()
    first.restore()
    assert _same(model, original)
    # edits of other neurons may be restored in any order
    a, b = erase(model, NEURONS[:1]), erase(model, NEURONS[2:])
    a.restore()
    b.restore()
    assert _same(model, original)


# ------------------------------------------------------------------------------------------ plain attribution


def _plain_attribution_sweep(model, grad: bool, stride: int) -> int:
    """Interrupt plain attribution at every ``stride``-th line event of the hook machinery (checking after each
    that no hook is left and grad mode is the caller's), then check a whole run gives the first run's numbers;
    returns how many line events a whole run has."""
    prompt = kn_lens.make_prompt(model, "The capital of France is", " Paris")
    kwargs = dict(layers=[1], n_steps=2, fast=False, return_convergence_delta=True)
    reference = kn_lens.integrated_gradients(model, prompt, **kwargs)

    def run():
        kn_lens.integrated_gradients(model, prompt, **kwargs)

    def check(n):
        assert _no_hooks(model), f"a hook was left on the model by an interrupt at line event {n}: {WHERE} {STACK}"
        assert torch.is_grad_enabled() is grad, f"grad mode changed by an interrupt at line event {n}: {WHERE}"

    before = torch.is_grad_enabled()
    torch.set_grad_enabled(grad)  # the caller's mode (set outside the interrupted region)
    try:
        total = _interrupt_everywhere(run, check, files=_machinery, stride=stride)
    finally:
        torch.set_grad_enabled(before)
    again = kn_lens.integrated_gradients(model, prompt, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(again, reference, strict=True))
    return total


def test_an_interrupt_in_plain_attribution_leaves_no_hook(random_llama):
    """TransformerLens' hooks() cleanup, interrupted, left hooks on the model (a later call then failed on sizes).
    Every 17th line event here; every one, in both grad modes, in the slow test below."""
    assert _plain_attribution_sweep(random_llama, grad=True, stride=17) > 500  # the machinery was reached


@pytest.mark.slow
@pytest.mark.parametrize("grad", [True, False])
def test_an_interrupt_anywhere_in_plain_attribution_leaves_no_hook(random_llama, grad):
    assert _plain_attribution_sweep(random_llama, grad=grad, stride=1) > 500  # the machinery was reached
