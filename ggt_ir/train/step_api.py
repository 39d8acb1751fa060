"""The step contract: what one optimization step means for a model family, and the helpers every
family shares.

``model_type`` in the options picks a step class from :data:`ggt_ir.train.steps.STEPS`. The generic
trainer (``trainer.py``) owns the loop, data, logging, checkpoints and validation; a step owns its
networks, losses and optimizers. A step subclasses :class:`Step` and provides:

* ``options`` (class attribute): the options dataclass its option files are typed against -- the
  core :class:`ggt_ir.train.options.Options`, or a subclass with the family's own keys;
  ``network_type`` (class attribute): the ``network_g.type`` it needs, or None for any pixel network;
  ``check_options(opt, src)`` (classmethod): checks only this family knows, at load time; ``own_loss``
  (class attribute): set by a family that computes its own objective and takes no image losses;
* ``__init__(opt, accelerator, log)``: build networks (loading ``path.pretrain_network_g``), losses,
  optimizers and schedulers; ``accelerator.prepare`` what trains; register every extra stateful object
  (schedulers, EMA) with ``accelerator.register_for_checkpointing`` so ``save_state``/``load_state``
  restore it;
* ``train_step(batch, it) -> dict[str, Tensor]``: one micro-batch inside
  ``accelerator.accumulate(<every trained module>)``; returns detached losses named ``l_*`` (or
  :data:`NONFINITE` when the update was skipped). Use :meth:`Step.losses_finite` and
  :meth:`Step.optimizer_step`, which hold the order every family must keep;
* ``restore(lq, sample=None) -> Tensor``: inference for validation (EMA weights when there are some);
  ``sample`` is the dataset's sample dict (prompt, category, key) for models that condition on it;
* ``export(path_stem, it) -> list[str]``: write the generator in its official layout (main process only);
* optional ``before_export()``: called on every rank before ``export`` (collectives, e.g. gathering
  FSDP/ZeRO-3 shards of the weights to export);
* ``describe() -> dict``: figures for the start-up banner; ``current_lr() -> float``.
"""
from __future__ import annotations

import contextlib

import torch

from ggt_ir.train.options import Options


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(accelerator, losses: dict, it: int, skip: bool) -> bool:
    """True when every rank's losses are finite. Otherwise stop with a clear error, or (``skip``)
    return False on every rank so all skip the update together (no rank hangs in a collective)."""
    total = sum(v.detach().float() for v in losses.values())
    bad = (~torch.isfinite(total)).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() == 0:
        return True
    if skip:
        return False
    values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
    raise NonFiniteLossError(
        f"non-finite loss at iteration {it} ({values}) on at least one process. The weights were not "
        "updated. Lower train.optim_g.lr, enable train.grad_clip, use bf16 instead of fp16, or set "
        "train.skip_nonfinite: true to skip such steps; resume from the last checkpoint with --resume latest."
    )


def optimizer_step(accelerator, loss: torch.Tensor, optimizer, scheduler, parameters, grad_clip: float) -> None:
    """backward -> clip (only when gradients are synchronised) -> step -> zero_grad -> scheduler step
    (once per real update: accelerate's optimizer skips the step while accumulating)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and grad_clip > 0:
        accelerator.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.sync_gradients:
        scheduler.step()


NONFINITE = {"nonfinite": torch.ones(())}


class Step:
    """Base of the trainer steps; see the module docstring for the contract."""

    options: type = Options
    network_type: str | None = None
    # set by subclasses in __init__
    acc = None
    opt: Options
    net_g: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema = None

    #: the family's own objective, for a family that takes no image losses (None: it takes them)
    own_loss: str | None = None

    @classmethod
    def check_options(cls, opt, src: str) -> None:
        """Raise :class:`ggt_ir.config.OptionsError` for option combinations this family cannot train.
        Subclasses extend it (``super().check_options(opt, src)``)."""
        if cls.own_loss and (opt.train.pixel_opt or opt.train.losses):
            from ggt_ir.config import OptionsError

            raise OptionsError(f"{src}: model_type {opt.model_type} trains with {cls.own_loss}; "
                               "remove train.pixel_opt / train.losses")

    # ------------------------------------------------------------------ shared helpers
    @staticmethod
    def load_generator(opt, log):
        """``network_g`` built, with ``path.pretrain_network_g`` loaded into it (what was loaded is logged)."""
        from ggt_ir.inference.loader import load_network

        net, report = load_network(opt.network_g, opt.path.pretrain_network_g, opt.path.param_key_g,
                                   opt.path.strict_load_g)
        if report is not None:
            log.info(str(report))
        return net

    def prepare_generator(self, net: torch.nn.Module, *extra):
        """``train.optim_g`` over ``net``'s trainable parameters, its schedule and (``train.ema_decay``) its EMA;
        ``accelerator.prepare(net, optimizer, *extra)``; the schedule and EMA registered for checkpointing.
        Sets ``net_g``, ``optimizer``, ``scheduler``, ``ema``; returns the prepared ``extra`` objects."""
        from ggt_ir.train.ema import EMA
        from ggt_ir.train.optim import build_optimizer, build_scheduler

        t = self.opt.train
        self.to_memory_format(net, *(m for m in extra if isinstance(m, torch.nn.Module)))
        optimizer = build_optimizer(net.parameters(), t.optim_g)
        self.scheduler = build_scheduler(optimizer, t)
        self.ema = EMA(net, t.ema_decay).to(self.acc.device) if t.ema_decay > 0 else None
        self.net_g, self.optimizer, *rest = self.acc.prepare(net, optimizer, *extra)
        # stepped by the step itself, once per optimizer update (a prepared scheduler steps once per process)
        self.acc.register_for_checkpointing(self.scheduler)
        if self.ema is not None:
            self.acc.register_for_checkpointing(self.ema)
        return rest

    def to_memory_format(self, *modules: torch.nn.Module) -> None:
        """``train.channels_last``: the modules' 4-D weights in NHWC; convolutions then keep activations NHWC."""
        if self.opt.train.channels_last:
            for m in modules:
                m.to(memory_format=torch.channels_last)

    def trained_optimizers(self) -> list:
        """Every optimizer this step updates (all are cleared when a step is skipped)."""
        return [self.optimizer]

    def losses_finite(self, losses: dict, it: int) -> bool:
        """:func:`check_finite` for this step; on a skipped update every optimizer's gradients are cleared."""
        if check_finite(self.acc, losses, it, self.opt.train.skip_nonfinite):
            return True
        for optimizer in self.trained_optimizers():
            optimizer.zero_grad(set_to_none=True)
        return False

    def optimizer_step(self, loss: torch.Tensor, optimizer, scheduler, parameters) -> None:
        optimizer_step(self.acc, loss, optimizer, scheduler, parameters, self.opt.train.grad_clip)

    def update_ema(self) -> None:
        if self.acc.sync_gradients and self.ema is not None:
            self.ema.update(self.acc.unwrap_model(self.net_g))

    def ema_weights(self, net: torch.nn.Module):
        """Context in which ``net`` carries its EMA weights (a no-op without EMA): validation and exports."""
        return self.ema.swapped_in(net) if self.ema is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def inference_network(self):
        """The unwrapped generator in eval mode, with its EMA weights in place, under autocast."""
        net = self.acc.unwrap_model(self.net_g)
        was_training = net.training
        net.eval()
        try:
            with self.ema_weights(net), self.acc.autocast(), torch.no_grad():
                yield net
        finally:
            net.train(was_training)

    # ------------------------------------------------------------------ contract defaults
    def describe(self) -> dict:
        return {}

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def before_export(self) -> None:
        pass

    def train_step(self, batch: dict, it: int) -> dict:
        raise NotImplementedError

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        raise NotImplementedError

    def export(self, path_stem, it: int) -> list[str]:
        raise NotImplementedError
