"""Training engines: one interface over a single process, DDP, FSDP2 and DeepSpeed ZeRO.

The loop never asks which strategy runs; it calls ``forward``/``backward`` per
micro-batch, then ``clip_gradients`` (health is checked on the returned norm before any
weight changes) and ``optimizer_step``; checkpoints go through ``save``/``load`` and the
final weights through ``full_state_dict``. Each engine owns its optimizer and scheduler
so that sharded optimizer state is saved by whoever sharded it.

Loss scaling convention: the loop passes losses already divided by the number of
target tokens (or pairs) in the *global* batch and multiplied by the world size; DDP,
FSDP and DeepSpeed average gradients over ranks, so the update equals the gradient of
the global-batch mean, independent of how samples fall on ranks and micro-batches.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.distributed.deepspeed_config import build_deepspeed_config
from kubetune_trainer.distributed.env import DistEnv
from kubetune_trainer.distributed.precision import Resolved, autocast, compute_dtype
from kubetune_trainer.errors import InvalidConfigError, UnsupportedError

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_NO_DECAY_MARKERS = ("bias", "norm", "ln_", "layernorm", "embed_positions")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(m in name.lower() for m in _NO_DECAY_MARKERS):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class Engine(ABC):
    """What the training loop needs from a parallelism strategy."""

    name: str = "single"
    #: Micro-batches must call ``sync_context`` (DDP no_sync) / ``after_backward``.
    model: nn.Module
    unwrapped: nn.Module

    def __init__(self, env: DistEnv, precision: Resolved) -> None:
        self.env = env
        self.precision = precision

    def forward(self, **kwargs: Any) -> Any:
        with autocast(self.precision, self.env.device, enabled=self.uses_autocast):
            return self.model(**kwargs)

    @property
    def uses_autocast(self) -> bool:
        return True

    @contextlib.contextmanager
    def sync_context(self, last_micro_batch: bool) -> Iterator[None]:
        yield

    @abstractmethod
    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None: ...

    @abstractmethod
    def clip_gradients(self, max_norm: float) -> float | None:
        """Global gradient norm before clipping (None if only known after the step)."""

    @abstractmethod
    def optimizer_step(self) -> float | None:
        """Apply the update; returns the grad norm when only known afterwards."""

    @abstractmethod
    def skip_step(self) -> None:
        """Drop the accumulated gradients without updating (tolerated NaN step)."""

    @abstractmethod
    def learning_rate(self) -> float: ...

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write model/optimizer/scheduler state; called on every rank."""

    @abstractmethod
    def load(self, directory: Path) -> None: ...

    @abstractmethod
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The unsharded state dict on rank 0 (None elsewhere); collective."""

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()


class _TorchOptimizerEngine(Engine):
    """An engine whose AdamW and LR schedule are plain torch objects (not DeepSpeed's)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any

    def _init_optimizer(
        self,
        module: nn.Module,
        job: ResolvedJob,
        scheduler_factory: SchedulerFactory,
        *,
        fused: bool | None,
    ) -> None:
        """``fused=None`` leaves torch's own choice (foreach on GPU); DTensors cannot fuse."""
        hp = job.spec.hyperparameters
        assert hp.learning_rate is not None and hp.weight_decay is not None  # resolved
        self.optimizer = torch.optim.AdamW(
            param_groups(module, hp.weight_decay),
            lr=hp.learning_rate,
            betas=(0.9, 0.999),
            eps=1e-8,
            fused=fused,
        )
        self.scheduler = scheduler_factory(self.optimizer)

    def _next_step(self) -> None:
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def skip_step(self) -> None:
        self._next_step()

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


class LocalEngine(_TorchOptimizerEngine):
    """One process, or DDP across processes (gloo on CPU, NCCL on GPU)."""

    def __init__(
        self,
        module: nn.Module,
        env: DistEnv,
        precision: Resolved,
        job: ResolvedJob,
        scheduler_factory: SchedulerFactory,
    ) -> None:
        super().__init__(env, precision)
        if not _is_quantized(module):  # bitsandbytes models are placed by device_map
            module = module.to(env.device)
        self.unwrapped = module
        self.params = trainable_parameters(module)
        # fused AdamW: one kernel over all parameters (CUDA, and CPU since torch 2.4)
        fused = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in self.params)
        self._init_optimizer(module, job, scheduler_factory, fused=fused)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.name = "ddp"
            self.model = DistributedDataParallel(
                module,
                device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
        else:
            self.name = "single"
            self.model = module

    @contextlib.contextmanager
    def sync_context(self, last_micro_batch: bool) -> Iterator[None]:
        if self.env.distributed and not last_micro_batch:
            with self.model.no_sync():  # type: ignore[operator]
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def clip_gradients(self, max_norm: float) -> float | None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        return float(norm)

    def optimizer_step(self) -> float | None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._next_step()
        return None

    def _named_trainable(self) -> dict[str, torch.Tensor]:
        return {
            n: p.detach().cpu() for n, p in self.unwrapped.named_parameters() if p.requires_grad
        }

    def save(self, directory: Path) -> None:
        if not self.env.is_main:  # DDP replicas are identical: rank 0 writes
            return
        torch.save(self._named_trainable(), directory / "trainable.pt")
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        if self.scaler is not None:
            torch.save(self.scaler.state_dict(), directory / "scaler.pt")

    def load(self, directory: Path) -> None:
        weights = torch.load(directory / "trainable.pt", map_location="cpu", weights_only=True)
        named = dict(self.unwrapped.named_parameters())
        missing = [n for n, p in named.items() if p.requires_grad and n not in weights]
        if missing:
            raise InvalidConfigError(
                f"checkpoint {directory} does not match the model (missing {missing[:3]}); "
                "was the method or model changed? Use checkpoint.resume: never."
            )
        with torch.no_grad():
            for name, value in weights.items():
                named[name].copy_(value.to(named[name].device, named[name].dtype))
        self.optimizer.load_state_dict(
            torch.load(directory / "optimizer.pt", map_location=self.env.device, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        if self.scaler is not None and (directory / "scaler.pt").exists():
            self.scaler.load_state_dict(torch.load(directory / "scaler.pt", weights_only=True))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if not self.env.is_main:
            return None
        return {k: v.detach().cpu() for k, v in self.unwrapped.state_dict().items()}


class FsdpEngine(_TorchOptimizerEngine):
    """FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded."""

    name = "fsdp"

    def __init__(
        self,
        module: nn.Module,
        env: DistEnv,
        precision: Resolved,
        job: ResolvedJob,
        scheduler_factory: SchedulerFactory,
    ) -> None:
        super().__init__(env, precision)
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        dtype = compute_dtype(precision)
        mp = (
            MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
            if dtype is not None
            else MixedPrecisionPolicy()
        )
        offload = CPUOffloadPolicy() if job.spec.distributed.offload != "none" else None
        kwargs: dict[str, Any] = {"mp_policy": mp}
        if offload is not None:
            kwargs["offload_policy"] = offload
        if env.device.type == "cuda" and offload is None:
            module.to(env.device)
        layer_classes = set(getattr(_hf_model(module), "_no_split_modules", None) or [])
        layers = [m for m in module.modules() if type(m).__name__ in layer_classes]
        if not layers:
            raise UnsupportedError(
                f"FSDP needs the model's decoder layer class (_no_split_modules) to shard; "
                f"{type(module).__name__} does not declare one. Use strategy ddp or deepspeed."
            )
        for layer in layers:
            fully_shard(layer, **kwargs)
        fully_shard(module, **kwargs)
        self.model = module
        self.unwrapped = module
        self.params = trainable_parameters(module)
        self._init_optimizer(module, job, scheduler_factory, fused=None)

    @property
    def uses_autocast(self) -> bool:
        return False  # the MixedPrecisionPolicy casts parameters

    @contextlib.contextmanager
    def sync_context(self, last_micro_batch: bool) -> Iterator[None]:
        self.model.set_requires_gradient_sync(last_micro_batch)  # type: ignore[operator]
        yield

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        loss.backward()

    def clip_gradients(self, max_norm: float) -> float | None:
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(full)

    def optimizer_step(self) -> float | None:
        self.optimizer.step()
        self._next_step()
        return None

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory / "fsdp"))
        if self.env.is_main:
            torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(directory / "fsdp"))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return cast(dict[str, torch.Tensor], state) if self.env.is_main else None


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO-1/2/3 with a config generated from the spec."""

    name = "deepspeed"

    def __init__(
        self,
        module: nn.Module,
        env: DistEnv,
        precision: Resolved,
        job: ResolvedJob,
        scheduler_factory: SchedulerFactory,
    ) -> None:
        super().__init__(env, precision)
        import deepspeed

        self.ds_config = build_deepspeed_config(job, precision, cuda=env.device.type == "cuda")
        self.stage = int(self.ds_config["zero_optimization"]["stage"])
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=module,
            model_parameters=param_groups(
                module, self.ds_config["optimizer"]["params"]["weight_decay"]
            ),
            config=self.ds_config,
            lr_scheduler=scheduler_factory,
        )
        self.model = engine
        self.engine = engine
        self.unwrapped = engine.module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self._pending_norm: float | None = None

    @property
    def uses_autocast(self) -> bool:
        return False  # DeepSpeed casts the module for bf16/fp16 itself

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        if not last_micro_batch:
            self.engine.step()  # counts the micro-step; DeepSpeed updates only at the boundary

    def clip_gradients(self, max_norm: float) -> float | None:
        return None  # DeepSpeed clips inside step() (gradient_clipping in the config)

    def optimizer_step(self) -> float | None:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def skip_step(self) -> None:
        # DeepSpeed cannot drop accumulated gradients from outside; fp16 skips overflowed
        # steps itself. The loop treats a tolerated NaN under DeepSpeed as fatal instead.
        self.engine.step()

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory / "deepspeed"),
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise InvalidConfigError(f"DeepSpeed could not load the checkpoint in {directory}")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
            return (
                {k: v.detach().cpu() for k, v in state.items()}
                if self.env.is_main and state
                else None
            )
        if not self.env.is_main:
            return None
        return {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}


def _is_quantized(module: nn.Module) -> bool:
    inner = _hf_model(module)
    return bool(
        getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "is_loaded_in_8bit", False)
    )


def _hf_model(module: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (for _no_split_modules)."""
    from kubetune_trainer.methods.base import find_pretrained

    return find_pretrained(module)


def build_engine(
    module: nn.Module,
    env: DistEnv,
    precision: Resolved,
    job: ResolvedJob,
    scheduler_factory: SchedulerFactory,
) -> Engine:
    strategy = job.spec.distributed.strategy
    if strategy == "deepspeed":
        return DeepSpeedEngine(module, env, precision, job, scheduler_factory)
    if strategy == "fsdp" and env.distributed:
        return FsdpEngine(module, env, precision, job, scheduler_factory)
    return LocalEngine(module, env, precision, job, scheduler_factory)


def write_engine_info(engine: Engine, directory: Path) -> None:
    info: dict[str, Any] = {"engine": engine.name, "precision": engine.precision}
    if isinstance(engine, DeepSpeedEngine):
        info["deepspeed"] = engine.ds_config
    (directory / "engine.json").write_text(json.dumps(info, indent=2, default=str))
