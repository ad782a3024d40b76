"""Retraining to convergence: convergence-check cost, the ensemble, and the authors' protocol.

Run: python benchmarks/bench_retrain.py [--arch lenet300100] [--trials 8] [--mirror DIR]

On real MNIST (prepared from the offline mirror) a LeNet-300-100 (or ``--arch lenet5``) is
trained densely as in the paper preset, pruned at random (``--trials`` masks), and retrained
to |L - L*| <= eps by ``prunetime.ensemble.retrain_trials``, side by side in this process:
1. share of retraining wall time spent in convergence checks at the default settings (a
   screened check after every step on the evaluation subset, trials one by one), without the
   screen (every check over all evaluation images), and with ``retrain.check_every`` = 4
   (window replay); the counts of the last two are compared with the default's;
2. the ensemble (all trials stacked, one vmap step) against the same trials one by one,
   with the per-trial iteration counts compared (they must be identical) and the largest
   weight difference (float reassociation only);
3. the default protocol against the authors' (the full 10k-image test set's loss after
   every step), on the first ``--authors-trials`` trials;
4. the exact savings of the job set-up, each switched off in turn on the same trials: the
   screen of the checks, the NaN fill of new tensors (torch's deterministic mode), the
   input-column cut of the checks (fully connected models), the steps and checks without
   autograd (``prunetime.backprop``, fully connected chains) and the fast max pooling in
   training (conv models).
Everything runs as the retraining jobs do (``study.setup_torch``: deterministic algorithms).
Absolute times depend on the machine and its load; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import add_mirror_arg  # noqa: E402  (puts the project's src on sys.path)

from prunetime import backprop, ensemble, models  # noqa: E402
from prunetime.data import eval_indices, load_prepared, prepare_dataset  # noqa: E402
from prunetime.ensemble import TrialSpec, retrain_trials  # noqa: E402
from prunetime.models import build_model, init_weights, weight_names  # noqa: E402
from prunetime.pruning import build_pruner  # noqa: E402
from prunetime.study import setup_torch  # noqa: E402
from prunetime.training import evaluate, train_dense  # noqa: E402


class CheckTimer:
    """Accumulates the wall time spent in the evaluation-set checks (screen included)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.orig = ensemble._Loop._losses

    def __enter__(self) -> CheckTimer:
        orig = self.orig

        def timed(loop, ens, full):
            t0 = time.perf_counter()
            try:
                return orig(loop, ens, full)
            finally:
                self.seconds += time.perf_counter() - t0

        ensemble._Loop._losses = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ensemble._Loop._losses = self.orig  # type: ignore[method-assign]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="lenet300100", choices=["lenet300100", "lenet5"])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--authors-trials", type=int, default=2)
    p.add_argument("--amount", type=float, default=0.5)
    p.add_argument("--dense-steps", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    add_mirror_arg(p)
    a = p.parse_args()
    setup_torch("cpu", a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "mnist.pt"
        prepare_dataset("mnist", Path(tmp) / "raw", prepared, 5000, 0, mirror=a.mirror)
        data = load_prepared(prepared)
    evalset = data.val.subset(eval_indices(len(data.val), a.eval_size, 0))
    model = build_model(a.arch)
    std = 0.1 if a.arch == "lenet300100" else 1.0  # the paper preset's initialisations
    init_weights(model, "normal", std, torch.Generator().manual_seed(0))
    train_dense(
        model,
        data.train,
        evalset,
        optimizer="adam",
        lr=0.01,
        batch_size=128,
        steps=a.dense_steps,
        generator=torch.Generator().manual_seed(1),
        log_every=a.dense_steps,
    )
    target, _ = evaluate(model, evalset)
    w_star = {k: v.detach().clone() for k, v in model.named_parameters()}
    pruner = build_pruner("random")
    layers = weight_names(model)

    def specs(n: int) -> list[TrialSpec]:
        out = []
        for i in range(n):
            masks = pruner.masks(model, layers, a.amount, torch.Generator().manual_seed(i))
            state = {k: v * masks[k] if k in masks else v.clone() for k, v in w_star.items()}
            out.append(TrialSpec(state, masks, torch.Generator().manual_seed(1000 + i)))
        return out

    kw = dict(
        target_loss=target, eps=a.eps, optimizer="adam", lr=0.01, batch_size=128,
        max_iters=a.max_iters,
    )  # fmt: skip

    def run(n: int, ev=evalset, template=model, **opts):
        with CheckTimer() as timer:
            t0 = time.perf_counter()
            res = retrain_trials(template, specs(n), data.train, ev, **{**kw, **opts})
            wall = time.perf_counter() - t0
        return res, wall, timer.seconds

    print(
        f"{a.arch}, random pruning s={a.amount}, {a.trials} trials, eps={a.eps}, "
        f"eval {a.eval_size} images, {a.threads} thread(s)"
    )
    # Interleaved: the machine's load drifts, so the compared runs alternate.
    default, t_def, c_def = run(a.trials, check_every=1, batched=False)
    ens, t_ens, _ = run(a.trials, check_every=1, batched=True)
    full, t_full, c_full = run(a.trials, check_every=1, batched=False, screen=False)
    sparse, t_sp, c_sp = run(a.trials, check_every=4, batched=False)
    default2, t_def2, c_def2 = run(a.trials, check_every=1, batched=False)
    ens2, t_ens2, _ = run(a.trials, check_every=1, batched=True)
    t_def, t_ens = min(t_def, t_def2), min(t_ens, t_ens2)
    its = [r.iterations for r in default]
    print(
        f"iterations: mean {sum(its) / len(its):.1f}, min {min(its)}, max {max(its)}; "
        f"statuses {sorted({r.status for r in default})}"
    )
    print("\n1. share of retraining time in convergence checks")
    print(f"   default (screened check every step)   {c_def2 / t_def2:6.1%}")
    print(f"   unscreened check every step           {c_full / t_full:6.1%}")
    print(f"   check_every=4 with window replay      {c_sp / t_sp:6.1%}")
    same_full = [(r.iterations, r.status) for r in full] == [
        (r.iterations, r.status) for r in default
    ]
    loss_diff = max(
        abs(x.final_eval_loss - y.final_eval_loss) for x, y in zip(full, default, strict=True)
    )
    print(
        f"   unscreened counts and statuses identical: {same_full}; largest final-loss "
        f"difference {loss_diff:.1e}"
    )
    differ = [(x, y.iterations) for x, y in zip(its, sparse, strict=True) if x != y.iterations]
    print(f"   check_every=4 counts that differ from every-step checking: {differ or 'none'}")

    diff = max(
        float((x.state[k] - y.state[k]).abs().max())
        for x, y in zip(default, ens, strict=True)
        for k in x.state
    )
    same = its == [r.iterations for r in ens] == [r.iterations for r in ens2]
    print("\n2. trials as one batched ensemble vs one by one (same protocol)")
    print(f"   one by one {t_def:7.2f} s   ensemble {t_ens:7.2f} s   speedup {t_def / t_ens:5.2f}x")
    print(f"   iteration counts identical: {same}; largest weight difference {diff:.2e}")

    n = min(a.authors_trials, a.trials)
    target_test, _ = evaluate(model, data.test)  # the authors' L(W*): on the test set
    # The authors' protocol: every step's loss over the whole test set (no screen).
    authors, t_auth, _ = run(n, ev=data.test, target_loss=target_test, batched=False, screen=False)
    ours, t_ours, _ = run(n, batched=False)
    it_auth = sum(max(r.iterations, 1) for r in authors)
    it_ours = sum(max(r.iterations, 1) for r in ours)
    per_auth, per_ours = t_auth / it_auth, t_ours / it_ours
    print("\n3. default protocol vs the authors' (10k test images after every step)")
    print(
        f"   same {n} trial(s): authors {1000 * per_auth:7.1f} ms/step   ours "
        f"{1000 * per_ours:7.1f} ms/step   speedup {per_auth / per_ours:5.1f}x per step"
    )
    print(
        f"   iterations authors {[r.iterations for r in authors]} ours "
        f"{[r.iterations for r in ours]} (each criterion on its own set: test vs validation)"
    )
    setup_savings(model, a.trials, run)


def setup_savings(model: torch.nn.Module, n: int, run) -> None:
    """Section 4: each exact saving of the job set-up switched off in turn, interleaved."""
    fast_pool = models.max_pool2

    def pool_reference(x: torch.Tensor) -> torch.Tensor:  # max_pool2d wherever autograd records
        if x.requires_grad and torch.is_grad_enabled():
            return F.max_pool2d(x, 2)
        return fast_pool(x)

    uncut = copy.deepcopy(model)
    uncut.input_weight = None
    chainless = copy.deepcopy(model)  # no linear_chain(): autograd and functional_call
    chainless.linear_chain = None
    variants = {
        "as the jobs run": {},
        "unscreened checks": {"screen": False},
        "NaN fill of new tensors on": {"fill": True},
    }
    if getattr(model, "input_weight", None):
        variants["checks over all input columns"] = {"template": uncut}
    if backprop.chain_of(model) is not None:
        variants["autograd steps and checks"] = {"template": chainless}
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        variants["max_pool2d in training"] = {"pool": True}
    best: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    for _ in range(2):  # interleaved, best of two: the machine's load drifts
        for name, v in variants.items():
            torch.utils.deterministic.fill_uninitialized_memory = bool(v.get("fill"))
            models.max_pool2 = pool_reference if v.get("pool") else fast_pool
            try:
                res, wall, _ = run(
                    n,
                    template=v.get("template", model),
                    batched=False,
                    screen=v.get("screen", True),
                )
            finally:
                torch.utils.deterministic.fill_uninitialized_memory = False
                models.max_pool2 = fast_pool
            its = [r.iterations for r in res]
            per_step = wall / max(sum(its), 1)
            best[name] = min(best.get(name, per_step), per_step)
            counts[name] = its
    base = best["as the jobs run"]
    print("\n4. exact savings of the job set-up, each switched off in turn (same trials)")
    for name in variants:
        same = counts[name] == counts["as the jobs run"]
        print(
            f"   {name:<32} {1000 * best[name]:7.1f} ms/step   {best[name] / base:5.2f}x the "
            f"jobs' time   counts identical: {same}"
        )


if __name__ == "__main__":
    main()
