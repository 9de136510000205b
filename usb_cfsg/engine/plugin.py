"""What USB 0.3.2's AlgorithmBase lacks, added to any registered algorithm by a mixin.

:func:`build_algorithm` subclasses the registered algorithm class (USB's ``fixmatch`` as well as
ours) with :class:`PluginMixin`, which

* takes data from our dataset registry and open-set split (USB's ``get_dataset`` returns None
  for names it does not know);
* builds loaders whose order and augmentations are exact across resume (engine.sampling);
* moves batches to the configured device instead of calling ``.cuda()`` (CPU works);
* replaces the CUDA-event TimerHook, uses bf16 autocast on CPU and fp16 + GradScaler on CUDA;
* builds CLIP nets with class-name-initialised classifiers;
* writes checkpoints atomically with RNG state and the resolved config, and resumes exactly or
  fails loudly (never a silent restart).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from ..config import config_to_dict
from ..errors import CheckpointError
from ..nets.backbone import unwrap
from ..registry import get_algorithm_class
from .checkpoint import atomic_save, load_state_strict, rng_state, safe_load, set_rng_state
from .device import apply_fast_paths, autocast_factory, grad_scaler
from .hooks import CompactLoggingHook, GuardedParamUpdateHook, StepEndHook, ThroughputHook
from .sampling import _mix, eval_loader, train_loader

logger = logging.getLogger("usb_cfsg")

#: ``eval_subset``: the loader evaluations during training read instead of the full one.
SUBSET_LOADERS = {"eval": "eval_subset", "test_open": "test_open_subset"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "usb_cfsg.train/1"
#: A run hook's factory: the run's config -> the hook, or None when the run does not want it.
HookFactory = Callable[[Any], Optional[Any]]
#: Hooks every run gets on top of USB's and the engine's, by name: (factory, USB priority name). The
#: layers above the engine fill it through :func:`register_run_hook` (``usb_cfsg.evaluation`` adds the
#: open-set evaluation and the relevance maps), so the engine imports none of them.
_RUN_HOOKS: Dict[str, Tuple[HookFactory, str]] = {}


def register_run_hook(name: str, factory: HookFactory, priority: str) -> None:
    """Give every run built from now on the hook ``factory(args)`` under ``name`` (registered again: replaced).

    Args:
        name: The hook's name in the algorithm's hook list (USB's ``register_hook`` name).
        factory: Called with the run's config at ``set_hooks``; returns the hook, or None to skip it.
        priority: USB's priority name (``"VERY_LOW"``, ``"LOW"``, ...).
    """
    _RUN_HOOKS[name] = (factory, priority)


def run_hook_names() -> List[str]:
    """The names :func:`register_run_hook` registered, in registration order."""
    return list(_RUN_HOOKS)


def msp_and_energy(logits: Any, energy_temperature: float = 1.0) -> Dict[str, np.ndarray]:
    """``msp`` = 1 - max softmax and ``energy`` = -T logsumexp(logits / T) of closed logits [N, K].

    Both higher = more unknown, in float64. ``energy`` is Liu et al.'s energy score (NeurIPS 2020,
    wetliu/energy_ood ``CIFAR/test.py``: ``-T * logsumexp(output / T)``), ``msp`` the maximum softmax
    probability baseline (Hendrycks & Gimpel, ICLR 2017), taken at T = 1.

    Args:
        logits: Closed-set logits [N, K].
        energy_temperature: T > 0 of the energy score.

    Returns:
        ``{"msp": [N], "energy": [N]}``.
    """
    if not energy_temperature > 0:
        raise ValueError(f"energy_temperature must be positive, got {energy_temperature}")
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1)
    total = np.exp(z - top[:, None]).sum(axis=1)  # max softmax = 1 / total
    zt = z / energy_temperature
    top_t = zt.max(axis=1)
    energy = -energy_temperature * (top_t + np.log(np.exp(zt - top_t[:, None]).sum(axis=1)))
    return {"msp": 1.0 - 1.0 / total, "energy": energy}


class PluginMixin:
    """Mixed in front of a USB algorithm class; see the module docstring.

    Subclasses (our algorithms) can set ``net_head`` (``clip`` or ``cfsg``) and override
    :meth:`net_spec` (head and head keyword arguments, from the config alone),
    :meth:`compute_unknown_scores` (open-set scores from net outputs and the config alone),
    :meth:`extra_state` / :meth:`load_extra_state`. The first two are classmethods because
    predict.py rebuilds a net and scores images from a checkpoint without building datasets or an
    algorithm instance.
    """

    net_head: str = "clip"
    device: torch.device
    # set by USB's AlgorithmBase, which this class is mixed in front of
    args: Any
    model: Any
    ema: Any
    ema_model: Any
    loader_dict: Dict[str, Any]
    print_fn: Any
    _hooks: list

    def __init__(
        self,
        args,
        net_builder,
        tb_log=None,
        logger=None,
        device: Optional[torch.device] = None,
        record_split: bool = True,
        weights_from_checkpoint: bool = False,
        **kw,
    ):
        self.device = device or torch.device("cpu")
        # eval.py: the weights come from a checkpoint; no CLIP weights fetched, no optimizer built
        self.weights_from_checkpoint = weights_from_checkpoint
        self.record_split = record_split  # write split.json to the run folder (training; not eval.py)
        self.openset_info = None
        super().__init__(args, net_builder, tb_log, logger, **kw)  # type: ignore[call-arg]  # USB's AlgorithmBase
        self.ngpus_per_node = max(1, args.world_size)  # USB computes rank % ngpus_per_node (0 on CPU)
        self.amp_cm = autocast_factory(self.device, bool(args.amp), getattr(args, "amp_dtype", "auto"))
        if args.amp and self.device.type == "cpu":
            self.print_fn(
                "amp on CPU runs bf16 autocast: correct everywhere, but much slower than fp32 on CPUs "
                "without bf16 units (AVX512-BF16/AMX); use --amp false for CPU speed"
            )
        self.loss_scaler = grad_scaler(self.device, bool(args.amp), getattr(args, "amp_dtype", "auto"))
        # after set_ema_model's deep copy: compile / channels_last act on the training model only
        self.compiled = apply_fast_paths(self.model, args, self.device)

    # ----------------------------------------------------------------- data
    def net_mean_std(self):
        mean_std_for = getattr(self.net_builder, "mean_std_for", None)  # CLIP nets: the weights' normalisation
        if mean_std_for is not None:
            return mean_std_for(self.args)
        return (getattr(self.net_builder, "mean", IMAGENET_MEAN), getattr(self.net_builder, "std", IMAGENET_STD))

    def set_dataset(self):
        from ..datasets import build_openset_datasets

        mean, std = self.net_mean_std()
        record = self.record_split and self.args.rank == 0
        run_dir = os.path.join(self.args.save_dir, self.args.save_name) if record else None
        dataset_dict, info = build_openset_datasets(self.args, self.algorithm, mean, std, run_dir)
        self.batched_views = None
        if getattr(self.args, "augment_device", "none") != "none":
            from ..datasets.batched_views import BatchedViews, use_raw_views

            use_raw_views(dataset_dict, self.args.img_size, self.args.crop_ratio)
            self.batched_views = BatchedViews(self.args.img_size, mean, std)
        cache = getattr(self.args, "cache_images", None)
        if cache is None or cache:  # none: automatic, within cache_budget_gb
            from ..datasets.cache import attach_image_cache

            budget = None if cache else int(float(getattr(self.args, "cache_budget_gb", 8.0)) * 2**30)
            attach_image_cache(dataset_dict, budget_bytes=budget)
        self.openset_info = info
        self.args.lb_dest_len = len(dataset_dict["train_lb"])
        self.args.ulb_dest_len = len(dataset_dict["train_ulb"]) if dataset_dict["train_ulb"] is not None else 0
        return dataset_dict

    def set_data_loader(self):
        a, d = self.args, self.dataset_dict
        pin = self.device.type == "cuda" and getattr(a, "pin_memory", True)
        keep = bool(getattr(a, "persistent_workers", False))
        world = max(1, a.world_size) if self.distributed else 1
        loaders = {
            "train_lb": train_loader(
                d["train_lb"], a.batch_size, self.num_iter_per_epoch, a.seed, a.rank, world, a.num_workers, pin, keep
            ),
            "train_ulb": train_loader(
                d["train_ulb"],
                a.batch_size * a.uratio,
                self.num_iter_per_epoch,
                a.seed + 1,
                a.rank,
                world,
                loader_workers(2 * a.num_workers),
                pin,
                keep,
            ),
            "eval": eval_loader(d["eval"], a.eval_batch_size, a.num_workers, pin, keep),
        }
        if d.get("test_open") is not None:
            loaders["test_open"] = eval_loader(d["test_open"], a.eval_batch_size, a.num_workers, pin, keep)
        info = self.openset_info
        subsets = {"eval": getattr(info, "eval_subset", None), "test_open": getattr(info, "test_subset", None)}
        for dest, positions in subsets.items():
            if positions is not None and d.get(dest) is not None:
                loaders[SUBSET_LOADERS[dest]] = eval_loader(
                    Subset(d[dest], positions.tolist()), a.eval_batch_size, a.num_workers, pin, keep
                )
        return loaders

    def training_eval_loader(self, dest: str) -> str:
        """The loader that evaluations *during training* read for ``dest`` (``eval``, ``test_open``).

        With ``eval_subset`` set, the fixed class-stratified subset's loader (:data:`SUBSET_LOADERS`);
        otherwise ``dest`` itself. The final evaluation and eval.py always read ``dest`` (all images).
        """
        sub = SUBSET_LOADERS.get(dest)
        return sub if sub is not None and sub in (getattr(self, "loader_dict", None) or {}) else dest

    # ---------------------------------------------------------------- model
    @classmethod
    def net_spec(cls, args) -> Tuple[str, Dict[str, Any]]:
        """``(head, head_kwargs)`` of this algorithm's CLIP network, computed from the config alone.

        The override point for algorithms that need another head or head switches. It is a
        classmethod so that predict.py can rebuild the network of a checkpoint (from its stored
        config) without datasets or an algorithm instance.
        """
        return cls.net_head, zero_shot_kwargs(args)

    @classmethod
    def validate_config(cls, args) -> list:
        """Problems of this algorithm's own config keys (ranges, combinations), as messages.

        Called by ``usb_cfsg.config.build_config`` before any data is read or any model built, so a
        value out of range fails in a second. The override point for our algorithms (e.g.
        ``sfm_keep_ratio`` in (0, 1]); ``usb_cfsg.config.check_ranges`` checks intervals. Default: none.
        """
        return []

    def set_model(self):
        a = self.args
        if not getattr(self.net_builder, "usb_cfsg_clip", False):
            return self.net_builder(
                num_classes=self.num_classes, pretrained=bool(a.pretrained), pretrained_path=a.pretrain_path
            )
        info = self.openset_info
        templates = a.prompt_templates or (info.prompt_templates if info is not None else None)
        head, head_kwargs = self.net_spec(a)
        kwargs = clip_net_kwargs(a, head, head_kwargs, info.seen_class_names if info is not None else None, templates)
        return self.net_builder(**kwargs, weights_from_checkpoint=self.weights_from_checkpoint)

    def set_optimizer(self):
        if self.weights_from_checkpoint:  # evaluation only: nothing is trained
            return None, None
        return super().set_optimizer()

    def set_ema_model(self):
        return copy.deepcopy(self.model)

    def set_hooks(self):
        super().set_hooks()
        self._install_engine_hooks()
        if not _RUN_HOOKS:  # usb_cfsg.register() imports usb_cfsg.evaluation, which registers them
            raise RuntimeError(
                "no run hooks registered: the open-set evaluation would be missing; import usb_cfsg.evaluation "
                "(usb_cfsg.register() does) before building an algorithm"
            )
        for name, (factory, priority) in _RUN_HOOKS.items():
            hook = factory(self.args)
            if hook is not None:
                self.register_hook(hook, name, priority)

    def _install_engine_hooks(self) -> None:
        """Swap USB's ParamUpdateHook, TimerHook and LoggingHook for ours (engine/hooks.py).

        GuardedParamUpdateHook takes ParamUpdateHook's place (non-finite losses skip the step);
        ThroughputHook goes right before USB's EvaluationHook (its clock excludes evaluation and
        checkpoint time) and StepEndHook after every other hook; CompactLoggingHook takes
        LoggingHook's place. Subclasses of USB's hooks (an algorithm's own) are left alone.
        """
        from semilearn.core.hooks import LoggingHook, ParamUpdateHook
        from semilearn.core.hooks.priority import get_priority

        throughput = ThroughputHook()
        hooks = []
        for hook in self._hooks:
            if type(hook).__name__ == "TimerHook":
                continue
            if type(hook) is ParamUpdateHook:
                hook = _named(GuardedParamUpdateHook(getattr(self.args, "max_bad_steps", 5)), hook.name, hook.priority)
            elif type(hook) is LoggingHook:
                hook = _named(CompactLoggingHook(throughput), hook.name, hook.priority)
            hooks.append(hook)
        at = next((i for i, h in enumerate(hooks) if type(h).__name__ == "EvaluationHook"), len(hooks))
        hooks.insert(at, _named(throughput, "TimerHook", get_priority("HIGH")))
        hooks.append(_named(StepEndHook(throughput), "StepEndHook", get_priority("LOWEST")))
        self._hooks = hooks

    # ------------------------------------------------------ open-set scores
    @classmethod
    def compute_unknown_scores(
        cls, outputs: Dict[str, np.ndarray], args, calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """Open-set scores from the net outputs, the config and a calibration (the override point).

        Default for any USB algorithm, from ``outputs["logits"]`` [N, K]: ``msp`` = 1 - max softmax
        and ``energy`` = -T logsumexp(logits / T) with T = ``energy_temperature`` (Liu et al.,
        NeurIPS 2020; T = 1 as their code, wetliu/energy_ood). Every score is higher = more likely
        unknown. Neither needs a calibration; algorithms whose scores do (cfsg_clip's ``fused``)
        read its ``ranges``.

        Args:
            outputs: What :meth:`predict_loader` collects (every batch-dim tensor the net returns),
                as numpy arrays of one length N; ``y`` is not included.
            args: The run's configuration.
            calibration: ``{"ranges": {score: [lo, hi]}, "thresholds": {score: t}, "source": str, ...}``
                fitted on training data by :func:`usb_cfsg.evaluation.evaluator.fit_calibration`, or
                None (not calibrated yet).

        Returns:
            ``(scores, primary)``: score name -> float array [N], and the name of the headline score.
        """
        return msp_and_energy(outputs["logits"], float(getattr(args, "energy_temperature", 1.0))), "msp"

    @classmethod
    def scores_with_calibration(
        cls, outputs: Dict[str, np.ndarray], args, calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """:meth:`compute_unknown_scores`, passing ``calibration`` only to overrides that accept it."""
        import inspect

        if calibration is not None and "calibration" in inspect.signature(cls.compute_unknown_scores).parameters:
            return cls.compute_unknown_scores(outputs, args, calibration=calibration)
        return cls.compute_unknown_scores(outputs, args)

    def unknown_scores(
        self, outputs: Dict[str, np.ndarray], calibration: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, np.ndarray], str]:
        """``(scores, primary)`` for this run: :meth:`compute_unknown_scores` with ``self.args``."""
        return self.scores_with_calibration(outputs, self.args, calibration)

    # ---------------------------------------------------------------- steps
    def _to_device(self, var):
        if isinstance(var, dict):
            return {k: self._to_device(v) for k, v in var.items()}
        if isinstance(var, torch.Tensor):
            return var.to(self.device, non_blocking=True)
        return var

    def process_batch(self, input_args=None, **kwargs):
        if input_args is None:
            from inspect import signature

            input_args = list(signature(self.train_step).parameters)
        if "x_lb_raw" in kwargs or "x_ulb_raw" in kwargs:
            kwargs = self._make_views(kwargs, input_args)
        return {k: self._to_device(v) for k, v in kwargs.items() if k in input_args and v is not None}

    def _make_views(self, batch: Dict[str, Any], input_args: Sequence[str]) -> Dict[str, Any]:
        """``augment_device``: the raw uint8 images become the views train_step takes, made on that device.

        A second weak view (``x_lb_w2``, ``x_ulb_w2``) is made only where the dataset would have given one
        (``OpenSetDataset.second_weak_view``), as on the PIL path.
        """
        views = getattr(self, "batched_views", None)
        if views is None:
            raise RuntimeError("the batch holds raw images (x_lb_raw / x_ulb_raw) but augment_device is none")
        where = torch.device("cpu") if self.args.augment_device == "cpu" else self.device
        if where.type != "cuda" and self.args.augment_device == "cuda":
            raise RuntimeError(
                f"augment_device: cuda, but the training device is {self.device}; set augment_device: cpu"
            )
        d: Dict[str, Any] = getattr(self, "dataset_dict", None) or {}
        second: Dict[str, bool] = {
            "x_lb_w2": getattr(d.get("train_lb"), "second_weak_view", False),
            "x_ulb_w2": getattr(d.get("train_ulb"), "second_weak_view", False),
        }
        wanted = [k for k in input_args if second.get(k, True)]
        raw: Dict[str, Any] = {
            k: batch[k].to(where, non_blocking=True) for k in ("x_lb_raw", "x_ulb_raw") if k in batch
        }
        merged: Dict[str, Any] = {**batch, **raw}
        step_seed = _mix(self.args.seed, self.it, getattr(self.args, "rank", 0), 0x5EED)
        return views.expand(merged, wanted, step_seed)

    def train(self):
        """USB's loop, resumable mid-epoch: epoch and position come from the iteration counter."""
        self.model.train()
        self.call_hook("before_run")
        lb, ulb = self.loader_dict["train_lb"], self.loader_dict["train_ulb"]
        while self.it < self.num_train_iter:
            self.epoch = self.it // self.num_iter_per_epoch
            for loader in (lb, ulb):
                loader.sampler.set_epoch(self.epoch)
                loader.sampler.set_start_iteration(self.it % self.num_iter_per_epoch)
            self.call_hook("before_train_epoch")
            for data_lb, data_ulb in zip(lb, ulb):
                if self.it >= self.num_train_iter:
                    break
                self.call_hook("before_train_step")
                self.out_dict, self.log_dict = self.train_step(**self.process_batch(**data_lb, **data_ulb))
                self.completed_iters = self.it + 1  # checkpoints written by the hooks below include this step
                self.call_hook("after_train_step")
                self.it += 1
            self.call_hook("after_train_epoch")
        self.completed_iters = self.it
        self.call_hook("after_run")

    @torch.no_grad()
    def predict_loader(self, dest: str, use_ema: bool = True):
        """Run the model over a loader; returns the concatenated outputs and labels (numpy).

        Every tensor output of the net with a batch dimension is collected (``logits``, ``feat``
        and, for our nets, unknown scores and the like).
        """
        self.model.eval()
        if use_ema and self.ema is not None:
            self.ema.apply_shadow()
        outs: Dict[str, list] = {}
        labels = []
        try:
            from ..progress import progress

            # zs_mode: weights predicts with the weight-space merge of the (EMA) weights
            net: Any = unwrap(self.model)
            merged = net.for_prediction() if hasattr(net, "for_prediction") else net
            model = self.model if merged is net else merged
            for data in progress(self.loader_dict[dest], desc=f"evaluating {dest} (batches)"):
                x = self._to_device(data["x_lb"])
                with self.amp_cm():
                    out = model(x)
                for k, v in out.items():
                    if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == data["y_lb"].shape[0]:
                        outs.setdefault(k, []).append(v.float().cpu())
                labels.append(data["y_lb"].cpu())
        finally:
            if use_ema and self.ema is not None:
                self.ema.restore()
            self.model.train()
        result = {k: torch.cat(v).numpy() for k, v in outs.items()}
        result["y"] = torch.cat(labels).numpy()
        return result

    def evaluate(self, eval_dest="eval", out_key="logits", return_logits=False):
        """USB's evaluation (called by its EvaluationHook during training), keys ``<eval_dest>/...``.

        With ``eval_subset`` set it reads the fixed subset (:meth:`training_eval_loader`), so
        ``eval/top-1-acc``, ``model_best.pth`` and ``eval/best_acc`` are measured on the subset.
        """
        from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score

        res = self.predict_loader(self.training_eval_loader(eval_dest))
        logits, y = res[out_key], res["y"]
        pred = logits.argmax(axis=1)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y).long()).item()
        eval_dict = {
            f"{eval_dest}/loss": float(loss),
            f"{eval_dest}/top-1-acc": float((pred == y).mean()),
            f"{eval_dest}/balanced_acc": float(balanced_accuracy_score(y, pred)),
            f"{eval_dest}/precision": float(precision_score(y, pred, average="macro", zero_division=0)),
            f"{eval_dest}/recall": float(recall_score(y, pred, average="macro", zero_division=0)),
            f"{eval_dest}/F1": float(f1_score(y, pred, average="macro", zero_division=0)),
        }
        if return_logits:
            eval_dict[f"{eval_dest}/logits"] = logits
        return eval_dict

    # ----------------------------------------------------------- checkpoints
    def extra_state(self) -> Dict[str, Any]:
        """Algorithm state outside the nets (our algorithms override); plain types and tensors."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def get_save_dict(self):
        info = self.openset_info
        save = {
            "format": CHECKPOINT_FORMAT,
            "model": unwrap(self.model).state_dict(),
            "ema_model": unwrap(self.ema_model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_scaler": self.loss_scaler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            # USB stores it + 1 even after the loop (then one too many); store completed iterations
            "it": int(getattr(self, "completed_iters", self.it)),
            "epoch": int(self.epoch + 1),
            "best_it": int(self.best_it),
            "best_eval_acc": float(self.best_eval_acc),
            "rng": rng_state(),
            "config": config_to_dict(self.args),
            "algorithm": self.algorithm,
            "class_names": list(info.seen_class_names) if info is not None else None,
            "unseen_class_names": list(info.unseen_class_names) if info is not None else None,
            "mean_std": [list(map(float, m)) for m in self.net_mean_std()],
            "extra": self.extra_state(),
        }
        return save

    def save_model(self, save_name, save_path):
        if self.distributed and int(self.args.rank) != 0:
            # rank 0 writes every checkpoint: USB's EvaluationHook.after_run saves from every process unless
            # multiprocessing_distributed (not the case under torchrun), into the same folder on a shared disk
            return
        save = self.get_save_dict()
        atomic_save(save, os.path.join(save_path, save_name))
        if save_name == "latest_model.pth":  # named by the non-finite-loss guard when it stops a run
            self.last_checkpoint = (os.path.join(save_path, save_name), int(save["it"]))
        self.print_fn(f"model saved: {os.path.join(save_path, save_name)}")

    def load_model(self, load_path):
        ckpt = safe_load(load_path, required=("format", "model", "ema_model", "optimizer", "it", "rng"))
        if ckpt["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{load_path!r} has format {ckpt['format']!r}, expected {CHECKPOINT_FORMAT!r}")
        if ckpt.get("algorithm") != self.algorithm:
            raise CheckpointError(
                f"{load_path!r} was written by algorithm {ckpt.get('algorithm')!r}; this run is {self.algorithm!r}"
            )
        load_state_strict(unwrap(self.model), ckpt["model"], "model", load_path)
        load_state_strict(unwrap(self.ema_model), ckpt["ema_model"], "ema_model", load_path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.loss_scaler.load_state_dict(ckpt["loss_scaler"])
            if self.scheduler is not None:
                if ckpt.get("scheduler") is None:
                    raise CheckpointError(f"{load_path!r} has no scheduler state but this run uses a scheduler")
                self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"optimizer/scheduler state in {load_path!r} does not fit this run: {exc}") from exc
        self.it = int(ckpt["it"])
        self.start_epoch = int(ckpt["epoch"])
        self.epoch = self.it // self.num_iter_per_epoch
        self.best_it = int(ckpt["best_it"])
        self.best_eval_acc = float(ckpt["best_eval_acc"])
        set_rng_state(ckpt["rng"])
        self.load_extra_state(ckpt.get("extra") or {})
        self.print_fn(f"resumed from {load_path} at iteration {self.it}")
        return ckpt


def _named(hook: Any, name: str, priority: int) -> Any:
    """Give a hook the ``name`` and ``priority`` that ``register_hook`` would set."""
    hook.name, hook.priority = name, priority
    return hook


def loader_workers(requested: int) -> int:
    """``requested`` DataLoader workers capped to the CPUs this process may use (launch.py logs the notice)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(requested), cpus))


def zero_shot_kwargs(args: Any) -> Dict[str, Any]:
    """The zero-shot prior's net keywords (``zs_weight``, ``zs_mode``) of a run, for every CLIP head."""
    return {"zs_weight": float(getattr(args, "zs_weight", 0.0)), "zs_mode": str(getattr(args, "zs_mode", "output"))}


def clip_net_kwargs(
    args,
    head: str,
    head_kwargs: Dict[str, Any],
    class_names: Optional[Sequence[str]],
    prompt_templates: Optional[Sequence[str]],
) -> Dict[str, Any]:
    """Keyword arguments of one of our CLIP net builders for a run (shared by set_model and predict.py)."""
    return dict(
        num_classes=args.num_classes,
        pretrained=args.pretrained,
        pretrained_path=args.pretrain_path,
        clip_model=getattr(args, "clip_model", None),
        head=head,
        img_size=args.img_size,
        num_tuned_blocks=args.num_tuned_blocks,
        class_names=list(class_names) if class_names is not None else None,
        prompt_templates=prompt_templates,
        text_encoder=args.text_encoder,
        seed=args.seed,
        **head_kwargs,
    )


def plugin_class(name: str) -> Type[Any]:
    """The class run for algorithm ``name``: the registered class with :class:`PluginMixin` in front."""
    base: Type[Any] = get_algorithm_class(name)
    if issubclass(base, PluginMixin):
        return base
    return type(f"Plugin{base.__name__}", (PluginMixin, base), {"__module__": __name__})


def build_algorithm(
    args,
    net_builder,
    tb_log=None,
    logger_=None,
    device: Optional[torch.device] = None,
    record_split: bool = True,
    weights_from_checkpoint: bool = False,
):
    """Instantiate the registered algorithm ``args.algorithm`` with :class:`PluginMixin` in front.

    ``record_split=False`` builds the datasets without writing ``split.json`` (evaluation);
    ``weights_from_checkpoint=True`` builds the net without fetching CLIP weights and no optimizer (eval.py).
    """
    if not hasattr(args, "distributed"):  # set by the launcher; a single process otherwise (eval, benchmarks)
        args.distributed = False
    return plugin_class(args.algorithm)(
        args=args,
        net_builder=net_builder,
        tb_log=tb_log,
        logger=logger_,
        device=device,
        record_split=record_split,
        weights_from_checkpoint=weights_from_checkpoint,
    )


__all__ = [
    "SUBSET_LOADERS",
    "PluginMixin",
    "build_algorithm",
    "clip_net_kwargs",
    "plugin_class",
    "register_run_hook",
    "run_hook_names",
]
