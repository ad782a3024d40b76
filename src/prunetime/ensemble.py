"""Retraining many pruned trials at once: one stacked ensemble instead of a loop of trainings.

The trials of a retraining job share the architecture and differ in their pruned weights,
masks and minibatch orders. On a small CPU their cost is per-step overhead, not FLOPs, so
they are trained together: every parameter is stacked along a leading trial axis, the
forward pass is ``torch.func.vmap`` over ``functional_call`` (batched matmuls / grouped
convs), and the optimizer is an elementwise update of the stacked tensors. Each trial keeps
its own mask, minibatch stream and stopping step; a trial that stops leaves the ensemble.

The optimizers are written out here (Adam and SGD as ``torch.optim`` defines them) rather
than taken from ``torch.optim``: they act on stacked tensors whose trials can be dropped, and
the first ``torch.optim`` step imports torch's compiler stack (seconds of start-up per job).

Convergence is checked every ``check_every`` steps on the evaluation set. When a check finds
a trial within eps (or diverged), or its loss crossed the eps band since the previous check,
the steps since that check are replayed from a snapshot with a check after every step, so
the reported iteration count is the first step meeting the criterion: exact, unless the loss
entered the band and left it on the side it came from between two checks. With
``check_every=1`` every step is checked, the authors' protocol on our evaluation subset.

A check is screened (``screen=True``, the default): the mean loss over the evaluation set is
at least the sum over any of its images divided by their total count, since cross-entropy is
never negative. So the check first evaluates the images that had the highest losses when last
seen; if their sum alone puts the loss above the eps band (with a margin for float error), the
trial is certainly not within eps and the rest is skipped. Otherwise the rest is evaluated and
the loss is exact. Whether a check passes is thus decided as without the screen: the counts
are exact, and only the loss curves lack the skipped checks' values. Divergence is decided on
exact losses too wherever the hardest images show it: a check whose hardest images' mean
passes the divergence limit is completed. Only a loss carried past the limit by the images
that were the easiest when last seen, while the hardest stay below it, would be found later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from prunetime import backprop
from prunetime.data import EVAL_CHUNK, Split

Tensors = dict[str, torch.Tensor]
# Activation bytes of one check chunk over all trials of a group (one LeNet-5 trial: 1000
# images are 13 MB; 50 LeNet-300-100 trials: 395 images).
CHUNK_BYTES = 64 * 2**20
# A screened check skips the rest of the evaluation set only when the hardest images' loss sum
# passes the band's upper edge by this relative margin: far above the float error of the
# sum (per-image losses summed in float64), so the full loss would be above the band too.
SCREEN_MARGIN = 1e-4
# The screen evaluates SCREEN_SLACK times as many of the hardest images as, by their last-seen
# losses, would pass the band (losses move between checks), rounded up to SCREEN_ROUND. When
# they do not pass it, only the rest is evaluated next: a miss costs a second, smaller pass.
SCREEN_SLACK, SCREEN_ROUND = 1.25, 32


@dataclass
class TrialSpec:
    """One trial to retrain: its starting weights, keep-masks (or None) and batch generator."""

    state: Tensors
    masks: Tensors | None
    generator: torch.Generator


@dataclass
class TrialResult:
    """Outcome of one trial; ``iterations`` is the stopping step (0 if already within eps)."""

    iterations: int
    status: str  # converged | capped | diverged
    final_eval_loss: float
    state: Tensors
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) checked


class StackedOptimizer:
    """Adam or SGD (torch.optim's update rules and defaults) on trial-stacked tensors."""

    def __init__(
        self, name: str, params: Tensors, lr: float, momentum: float = 0.0, step: int = 0
    ) -> None:
        if name not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {name!r}; allowed: 'adam', 'sgd'")
        self.name, self.lr, self.momentum, self.t = name, lr, momentum, step
        self.state: dict[str, Tensors] = {k: {} for k in params}

    def step(self, params: Tensors) -> None:
        """Update ``params`` in place from their ``.grad`` (one step for every trial)."""
        self.t += 1
        with torch.no_grad():
            ps = list(params.values())
            gs = [p.grad for p in ps]
            sts = [self.state[k] for k in params]
            if self.name == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                for st, p in zip(sts, ps, strict=True):
                    if not st:
                        st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                ms, vs = [st["m"] for st in sts], [st["v"] for st in sts]
                # torch.optim's fused Adam kernel (one pass over p, g, m, v instead of six
                # foreach passes; the devices prunetime runs on, CPU and CUDA, both have it).
                # It reads the step count from a tensor and does not advance it.
                step = torch.tensor(float(self.t), device=ps[0].device)
                torch._fused_adam_(
                    ps, gs, ms, vs, [], [step] * len(ps), lr=self.lr, beta1=b1, beta2=b2,
                    weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
                )  # fmt: skip
            else:
                if self.momentum:
                    for st, g in zip(sts, gs, strict=True):
                        if "buf" not in st:
                            st["buf"] = g.detach().clone()
                        else:
                            st["buf"].mul_(self.momentum).add_(g)
                    gs = [st["buf"] for st in sts]
                torch._foreach_add_(ps, gs, alpha=-self.lr)

    def select(self, keep: torch.Tensor) -> StackedOptimizer:
        """The optimizer of the trials at positions ``keep`` (same step count)."""
        out = StackedOptimizer(self.name, self.state, self.lr, self.momentum, self.t)
        out.state = {k: {n: v[keep].clone() for n, v in st.items()} for k, st in self.state.items()}
        return out


class _InputCut:
    """Retraining in an input column order where the evaluation set's all-zero columns come last.

    A model whose first layer is fully connected on the flattened input names that weight in
    its ``input_weight`` attribute. Input columns that are zero in every evaluation image
    (MNIST's border pixels: 162 of 784 in the 1000-image subset) add nothing to that layer's
    product in a check. With the columns of the weight, the training images and the
    evaluation images permuted so that those come last, a check multiplies only the first
    ``k`` columns: a view, no copy per check. Training is unchanged (the same products in
    another summation order), and results are permuted back. Exact up to float summation
    order, as long as the weights on the cut columns are finite (else the full product).
    """

    def __init__(self, name: str, train: Split, flat: torch.Tensor, nonzero: torch.Tensor) -> None:
        """``flat``: the evaluation images flattened; ``nonzero``: their columns not all zero
        (built by :meth:`of`)."""
        self.name, self.k = name, int(nonzero.sum())
        self.perm = torch.cat([nonzero.nonzero().flatten(), (~nonzero).nonzero().flatten()])
        self.inv = torch.argsort(self.perm)
        self.train = Split(train.x.reshape(len(train.x), -1).index_select(1, self.perm), train.y)
        self.x_full = flat.index_select(1, self.perm)
        self.x_cut = self.x_full[:, : self.k].contiguous()

    @staticmethod
    def of(template: nn.Module, train: Split, evalset: Split) -> _InputCut | None:
        """The cut for ``template`` on ``evalset``, or None (no ``input_weight``, or nothing
        to cut)."""
        name = getattr(template, "input_weight", None)
        if name is None:
            return None
        in_features = dict(template.named_parameters())[name].shape[-1]
        flat = evalset.x.reshape(len(evalset.x), -1)
        if flat.shape[1] != in_features:
            return None
        nonzero = (flat != 0).any(0)
        return None if bool(nonzero.all()) else _InputCut(name, train, flat, nonzero)

    def permuted(self, tensors: Tensors, order: torch.Tensor) -> Tensors:
        """``tensors`` with the input weight's columns in ``order`` (perm in, inv out)."""
        return {
            k: v.index_select(-1, order.to(v.device)) if k == self.name else v
            for k, v in tensors.items()
        }

    def eval_input(self, params: Tensors) -> tuple[Tensors, torch.Tensor]:
        """The parameters and evaluation images a check multiplies."""
        w = params[self.name]
        # Sum is finite iff every weight on the cut columns is (or it overflowed: then the
        # full product, merely slower). 0 * inf is NaN, which the full product must show.
        if bool(torch.isfinite(w[..., self.k :].sum())):
            return {**params, self.name: w[..., : self.k]}, self.x_cut
        return params, self.x_full


def _activation_elems(template: nn.Module, sample: torch.Tensor) -> int:
    """Activation elements one sample produces through the network's leaf modules."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel()

    leaves = [m for m in template.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            template(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


class _Ensemble:
    """The trials being trained together: stacked weights, masks, streams and optimizer."""

    def __init__(
        self,
        template: nn.Module,
        params: Tensors,
        masks: Tensors | None,
        streams: list[Any],
        opt: StackedOptimizer,
        ids: list[int],
        batched: bool,
        cut: _InputCut | None = None,
    ) -> None:
        self.template, self.masks, self.streams, self.opt = template, masks, streams, opt
        self.ids, self.batched, self.cut = ids, batched, cut
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        # One trial of a fully connected chain: steps and checks without autograd or
        # functional_call (prunetime.backprop: bitwise the same numbers, less overhead).
        self.chain = None if batched else backprop.chain_of(template)
        # The masks in the weights' dtype: multiplying a gradient by a bool mask converts the
        # mask on every step (a copy per weight), by 1.0 and 0.0 gives the same values.
        self.grad_masks = {k: m.to(self.params[k].dtype) for k, m in (masks or {}).items()}

    def _forward(self, params: Tensors, x: torch.Tensor, shared_x: bool) -> torch.Tensor:
        if not self.batched:  # one trial: a plain functional call on its weights
            # A view without the trial axis: its backward is a view too (indexing with [0]
            # would fill a zero tensor and copy the gradient into it, for every weight).
            flat = {k: v.view(v.shape[1:]) for k, v in params.items()}
            if self.chain is not None and not torch.is_grad_enabled():
                return backprop.forward(self.chain, flat, x)[None]
            return functional_call(self.template, flat, (x,))[None]
        fn = vmap(
            lambda p, xb: functional_call(self.template, p, (xb,)),
            in_dims=(0, None if shared_x else 0),
        )
        return fn(params, x)

    def train_step(self, train: Split) -> None:
        idx = torch.stack([next(s) for s in self.streams])  # (trials, batch)
        x, y = (self.cut.train if self.cut else train).batch(idx)
        if not self.batched:
            x = x[0]
        if self.chain is not None:
            flat = {k: v.detach().view(v.shape[1:]) for k, v in self.params.items()}
            _, grads = backprop.loss_and_grads(self.chain, flat, x, y[0])
            for k, g in grads.items():
                self.params[k].grad = g[None]
        else:
            logits = self._forward(self.params, x, shared_x=False)
            per_trial = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            per_trial.view_as(y).mean(1).sum().backward()
        for k, m in self.grad_masks.items():
            self.params[k].grad.mul_(m)
        # Pruned weights start at zero and get zero gradients, so Adam's moments and SGD's
        # momentum stay zero there and the update leaves them exactly zero: no re-masking.
        self.opt.step(self.params)
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def eval_losses(self, evalset: Split, chunk: int) -> torch.Tensor:
        """Mean cross-entropy of every trial on ``evalset`` (per-image losses summed in float64,
        so the mean does not depend on the order or grouping in which images were evaluated)."""
        return _mean(self.image_losses(evalset, chunk))

    @torch.no_grad()
    def image_losses(
        self, evalset: Split, chunk: int, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-image cross-entropy [trials, n] of every trial, chunked to bound memory: on all
        of ``evalset`` in order (``rows`` None), or on each trial's own ``rows`` [trials, n]."""
        params, x_all = self.params, evalset.x
        if self.cut is not None:
            params, x_all = self.cut.eval_input(params)
        trials = len(self.ids)
        n = len(evalset) if rows is None else rows.shape[1]
        out = []
        for start in range(0, n, chunk):
            if rows is None:
                x, y = x_all[start : start + chunk], evalset.y[start : start + chunk]
                logits = self._forward(params, x, shared_x=True)
                ys = y.repeat(trials) if trials > 1 else y
            else:
                r = rows[:, start : start + chunk]
                if self.batched:
                    logits = self._forward(params, x_all[r], shared_x=False)
                else:
                    logits = self._forward(params, x_all.index_select(0, r[0]), shared_x=True)
                ys = evalset.y[r].flatten()
            losses = F.cross_entropy(logits.flatten(0, 1), ys, reduction="none")
            out.append(losses.view(trials, -1))
        return torch.cat(out, 1)

    def snapshot(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "opt": self.opt.select(torch.arange(len(self.ids))),
            "streams": [
                {"rng": s.generator.get_state(), "perm": s.perm, "pos": s.pos} for s in self.streams
            ],
        }

    def select(self, positions: list[int]) -> _Ensemble:
        """The sub-ensemble of the trials at ``positions``."""
        keep = torch.tensor(positions, dtype=torch.long, device=self._device())
        return _Ensemble(
            self.template,
            {k: v.detach()[keep].clone() for k, v in self.params.items()},
            {k: m[keep] for k, m in self.masks.items()} if self.masks else None,
            [self.streams[i] for i in positions],
            self.opt.select(keep),
            [self.ids[i] for i in positions],
            self.batched,
            self.cut,
        )

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def state_of(self, pos: int) -> Tensors:
        """Trial ``pos``'s weights (in the input's own column order)."""
        state = {k: v.detach()[pos].clone() for k, v in self.params.items()}
        return self.cut.permuted(state, self.cut.inv) if self.cut else state


def _mean(losses: torch.Tensor) -> torch.Tensor:
    """Each trial's mean of its per-image losses [trials, n], summed in float64: the same
    value whichever images were evaluated together or in which order."""
    return losses.double().sum(1) / losses.shape[1]


def _restore(ens: _Ensemble, snap: dict[str, Any], positions: list[int]) -> _Ensemble:
    """The trials at ``positions`` as they were at the snapshot (weights, optimizer, streams).

    The streams are copies, so replaying a window leaves the ensemble's own streams where
    they are (a trial whose replay finds nothing goes on from the current step).
    """
    from prunetime.training import BatchStream

    keep = torch.tensor(positions, dtype=torch.long, device=ens._device())
    streams = []
    for i in positions:
        st, old = snap["streams"][i], ens.streams[i]
        gen = torch.Generator(device=old.generator.device)
        gen.set_state(st["rng"])
        stream = BatchStream(old.n, old.batch_size, gen)
        stream.perm, stream.pos = st["perm"], st["pos"]
        streams.append(stream)
    return _Ensemble(
        ens.template,
        {k: v[keep].clone() for k, v in snap["params"].items()},
        {k: m[keep] for k, m in ens.masks.items()} if ens.masks else None,
        streams,
        snap["opt"].select(keep),
        [ens.ids[i] for i in positions],
        ens.batched,
        ens.cut,
    )


def retrain_trials(
    template: nn.Module,
    trials: list[TrialSpec],
    train: Split,
    evalset: Split,
    *,
    target_loss: float,
    eps: float,
    optimizer: str,
    lr: float,
    batch_size: int,
    max_iters: int,
    momentum: float = 0.0,
    divergence_factor: float = 100.0,
    check_every: int = 1,
    screen: bool = True,
    batched: bool = True,
    group_bytes: int = 512 * 2**20,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_result: Callable[[int, TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Retrain every trial until |L(W_t) - L(W*)| <= eps on ``evalset`` (or the cap).

    Status is 'diverged' (at the check that saw it) when a trial's loss becomes non-finite
    or exceeds ``divergence_factor`` times its loss right after pruning; 'capped' when
    ``max_iters`` steps did not reach the criterion. ``batched=False`` trains the trials one
    after another with the same update rules (the reference the ensemble is checked against).
    ``screen``: checks skip the rest of the evaluation set once its hardest images prove a
    trial above the eps band (the module docstring says why that is exact); the results then
    hold the losses of the fully evaluated checks only.
    Trials are batched in groups whose activations and optimizer state fit ``group_bytes``.
    ``on_result(index, result)`` is called as soon as a trial finishes (to journal it).
    """
    from prunetime.training import BatchStream

    if check_every < 1:
        raise ValueError(f"check_every={check_every} must be >= 1")
    if not trials:
        return []
    device = train.x.device
    act = _activation_elems(template, evalset.x)
    n_params = sum(v.numel() for v in trials[0].state.values())
    per_trial = 4 * (8 * n_params + 4 * batch_size * act)
    size = max(1, min(len(trials), group_bytes // per_trial)) if batched else 1
    # A check's chunk: at most EVAL_CHUNK images and CHUNK_BYTES of activations over the
    # group's trials (larger passes were slower: see data.EVAL_CHUNK).
    chunk = max(1, min(len(evalset), EVAL_CHUNK, CHUNK_BYTES // (4 * act * size)))
    results: list[TrialResult | None] = [None] * len(trials)
    # One loop over all groups: its state is keyed by trial index, and its count of finished
    # trials is what the progress lines report.
    loop = _Loop(
        train, evalset, target_loss, eps, divergence_factor, chunk, screen, progress, on_result
    )
    cut = _InputCut.of(template, train, evalset)
    for start in range(0, len(trials), size):
        group = list(range(start, min(start + size, len(trials))))
        specs = [trials[i] for i in group]
        names = list(specs[0].state)
        params = {k: torch.stack([s.state[k].to(device) for s in specs]) for k in names}
        masks = None
        if specs[0].masks is not None:
            masks = {
                k: torch.stack([s.masks[k].to(device) for s in specs])  # type: ignore[index]
                for k in specs[0].masks
            }
        if cut is not None:
            params = cut.permuted(params, cut.perm)
            masks = cut.permuted(masks, cut.perm) if masks is not None else None
        if masks is not None:
            with torch.no_grad():
                for k, m in masks.items():
                    params[k].mul_(m)
        streams = [BatchStream(len(train), batch_size, s.generator) for s in specs]
        ens = _Ensemble(
            template,
            params,
            masks,
            streams,
            StackedOptimizer(optimizer, params, lr, momentum),
            group,
            batched and len(group) > 1,
            cut,
        )
        for tid, res in loop.run(ens, 0, max_iters, check_every, initial=True).items():
            results[tid] = res
    return [r for r in results if r is not None]


class _Loop:
    """The check/step/replay loop over one ensemble (shared by the replay of a window)."""

    def __init__(
        self,
        train: Split,
        evalset: Split,
        target: float,
        eps: float,
        divergence_factor: float,
        chunk: int,
        screen: bool,
        progress: Callable[[dict[str, Any]], None] | None,
        on_result: Callable[[int, TrialResult], None] | None,
    ) -> None:
        self.train, self.evalset, self.target, self.eps = train, evalset, target, eps
        self.factor, self.chunk, self.screen = divergence_factor, chunk, screen
        self.progress, self.on_result = progress, on_result
        self.limits: dict[int, float] = {}
        self.curves: dict[int, list[tuple[int, float]]] = {}  # fully evaluated checks
        self.sides: dict[int, int] = {}  # the side of the band at the latest check
        self.seen: dict[int, torch.Tensor] = {}  # per-image losses when last evaluated
        self.done = 0

    def _losses(self, ens: _Ensemble, full: bool) -> list[float | None]:
        """Every trial's loss on the evaluation set; None where a screen proved it above the
        eps band (and, by its hardest images, not past the divergence limit)."""
        n = len(self.evalset)
        rows = order = None
        need = (self.target + self.eps) * n * (1 + SCREEN_MARGIN)
        if self.screen and not full:
            seen, order = torch.stack([self.seen[tid] for tid in ens.ids]).sort(1, descending=True)
            reach = seen.double().cumsum(1) > need
            if bool(reach[:, -1].all()):  # the last-seen losses of every trial pass the band
                k = math.ceil((int(reach.int().argmax(1).max()) + 1) * SCREEN_SLACK)
                k = -(-k // SCREEN_ROUND) * SCREEN_ROUND
                rows = order[:, :k] if k < n else None
        if rows is None or order is None:
            li = ens.image_losses(self.evalset, self.chunk)
        else:
            part = ens.image_losses(self.evalset, self.chunk, rows)
            s = part.double().sum(1)
            limit = torch.tensor([self.limits[tid] for tid in ens.ids], dtype=torch.float64)
            # A trial whose hardest images' mean passes the divergence limit (then the whole
            # mean might) is evaluated in full, so divergence is decided on the exact loss.
            if bool((torch.isfinite(s) & (s > need) & (s <= limit * rows.shape[1])).all()):
                self._remember(ens, part, rows)
                return [None] * len(ens.ids)
            rest = order[:, rows.shape[1] :]
            li = torch.empty(len(ens.ids), n, dtype=part.dtype, device=part.device)
            li.scatter_(1, rows, part)
            li.scatter_(1, rest, ens.image_losses(self.evalset, self.chunk, rest))
        if self.screen:
            self._remember(ens, li, None)
        return _mean(li).tolist()

    def _remember(self, ens: _Ensemble, losses: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Keep the per-image losses just evaluated: they order the next screened check."""
        for pos, tid in enumerate(ens.ids):
            if rows is None:
                self.seen[tid] = losses[pos].clone()
            else:
                self.seen[tid][rows[pos]] = losses[pos]

    def _event(self, tid: int, loss: float) -> str | None:
        if not math.isfinite(loss) or loss > self.limits[tid]:
            return "diverged"
        if abs(loss - self.target) <= self.eps:
            return "converged"
        return None

    def run(
        self, ens: _Ensemble, t0: int, t_end: int, every: int, initial: bool = False
    ) -> dict[int, TrialResult]:
        """Train ``ens`` from step ``t0`` to at most ``t_end``; results by trial id.

        ``initial``: the first call (checks the pruned weights, caps whoever is left at the
        end); a replay of a window reports only the trials whose event it finds.
        """
        out: dict[int, TrialResult] = {}
        if initial:
            losses = [math.nan if v is None else v for v in self._losses(ens, full=True)]
            keep = []
            for pos, (tid, loss) in enumerate(zip(ens.ids, losses, strict=True)):
                self.limits[tid] = self.factor * max(loss, self.target)
                self.curves[tid] = [(0, loss)]
                self.sides[tid] = self._side(loss)
                if abs(loss - self.target) <= self.eps:
                    out[tid] = TrialResult(0, "converged", loss, ens.state_of(pos), [(0, loss)])
                    self._report(out, [tid])
                else:
                    keep.append(pos)
            if len(keep) < len(ens.ids):
                if not keep:
                    return out
                ens = ens.select(keep)
        # Snapshots exist only to replay a window; checking every step never replays.
        snap, t_snap = (ens.snapshot() if every > 1 else None), t0
        t = t0
        while ens.ids and t < t_end:
            t += 1
            ens.train_step(self.train)
            if t % every and t != t_end:
                continue
            # The last step's check is never screened: a capped trial reports its exact loss.
            losses = self._losses(ens, full=t == t_end)
            events = {
                pos: None if loss is None else self._event(tid, loss)
                for pos, (tid, loss) in enumerate(zip(ens.ids, losses, strict=True))
            }
            found = [pos for pos, ev in events.items() if ev is not None]
            # A loss that went from above the eps band to below it (or back) since the last
            # check passed through the band in between: replay that window too.
            crossed = [
                pos
                for pos, (tid, loss) in enumerate(zip(ens.ids, losses, strict=True))
                if events[pos] is None and self._side(loss) * self.sides[tid] < 0
            ]
            if (found or crossed) and every > 1 and t - t_snap > 1:
                # Replay the window (t_snap, t) with a check after every step.
                sub = _restore(ens, snap, sorted(found + crossed))
                out.update(self.run(sub, t_snap, t - 1, 1))
            found = [pos for pos in range(len(ens.ids)) if events[pos] or ens.ids[pos] in out]
            for pos in found:
                tid, loss = ens.ids[pos], losses[pos]
                if tid not in out:
                    assert loss is not None  # an event is only ever found on an exact loss
                    self.curves[tid].append((t, loss))
                    out[tid] = TrialResult(
                        t, str(events[pos]), loss, ens.state_of(pos), self.curves[tid]
                    )
            for pos, tid in enumerate(ens.ids):
                loss = losses[pos]
                if pos not in found:
                    self.sides[tid] = self._side(loss)
                    if loss is not None:
                        self.curves[tid].append((t, loss))
            if initial:
                self._report(out, [ens.ids[pos] for pos in found])
            if found:
                rest = [pos for pos in range(len(ens.ids)) if pos not in found]
                if not rest:
                    break
                ens = ens.select(rest)
            snap, t_snap = (ens.snapshot() if every > 1 else None), t
            if self.progress is not None and initial:
                self.progress({"step": t, "active": len(ens.ids), "done": self.done})
        if initial:
            for pos, tid in enumerate(ens.ids):
                if tid not in out:
                    loss = self.curves[tid][-1][1]
                    out[tid] = TrialResult(t, "capped", loss, ens.state_of(pos), self.curves[tid])
                    self._report(out, [tid])
            if self.progress is not None:
                self.progress({"step": t, "active": 0, "done": self.done})
        return out

    def _side(self, loss: float | None) -> int:
        """+1 above the eps band around the target (None: a screen proved it), -1 below, 0 in."""
        if loss is None or loss > self.target + self.eps:
            return 1
        return -1 if loss < self.target - self.eps else 0

    def _report(self, out: dict[int, TrialResult], tids: list[int]) -> None:
        """Count the trials that finished and hand their results on."""
        self.done += len(tids)
        if self.on_result is not None:
            for tid in tids:
                self.on_result(tid, out[tid])
