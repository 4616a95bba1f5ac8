"""Training FusionMamba on paired image folders, on one device or under torchrun (DDP).

The loop follows the official recipe by default (Adam, lr 1e-4 * 0.75^(epoch-1), the output
clipped to [0, 1] before the loss) and adds what a long run needs: checkpoints with full resume
state, validation metrics, AMP and DistributedDataParallel. Recipe options, all off by default:
the loss on the unclipped output (`loss_on="unclamped"`), keeping the best checkpoint by a
validation score (`keep_best`), decoded images cached in memory (`cache_images`) and a CPU
thread count (`threads`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .data import PairDataset, check_pair_sizes, find_pairs, to_grey
from .files import atomic_write
from .imaging import load_image

SCHEDULES = ("official", "cosine", "constant")
AMP_MODES = ("none", "fp16", "bf16")
LOSS_ON = ("clamped", "unclamped")
VAL_METRICS = ("vif", "qabf", "ssim")


@dataclasses.dataclass
class TrainConfig:
    a_dir: str
    b_dir: str
    out_dir: str = "runs/fusionmamba"
    preset: str = "base"
    model_config: dict = dataclasses.field(default_factory=dict)  # overrides of the preset's constructor kwargs
    variant: str | None = None  # a structure ablation (FusionMamba's `variant`); None: the full model
    init_weights: str | None = None  # start from these weights instead of a random init
    epochs: int = 2
    steps: int | None = None  # overrides epochs
    batch_size: int = 2  # per process
    lr: float = 1e-4
    schedule: str = "official"
    crop: int | None = 256
    resize: int | None = None  # resize whole images instead of cropping (the official recipe used 256)
    augment: bool = True
    seed: int = 0
    loss: str = "official"
    loss_without: tuple = ()  # loss terms left out ("int", "text", "ssim"): the paper's loss ablation
    loss_weights: dict = dataclasses.field(default_factory=dict)  # {"int" | "text" | "ssim": weight} overriding the preset
    checkpoint_every: int = 1000
    resume: str | None = None  # a checkpoint path, or "auto" for out_dir/last.pt when it exists
    val_pairs: list = dataclasses.field(default_factory=list)  # [(a_path, b_path), ...]
    val_every: int = 1000
    val_metrics: tuple = VAL_METRICS
    keep_best: tuple = ()  # metrics whose mean ratio to average fusion on val picks out_dir/best; () keeps none
    loss_on: str = "clamped"  # "unclamped": the loss sees the raw output, so pixels beyond [0, 1] get a gradient
    cache_images: bool = False  # decode the training pairs once and keep them in memory
    threads: int | None = None  # torch.set_num_threads for the run (CPU)
    amp: str = "none"
    device: str = "auto"
    backend: str = "auto"
    num_workers: int = 0
    log_every: int = 10
    weights_digest: bool = False  # each rank writes a SHA-256 of its final weights (checks DDP replicas agree)

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {self.loss_on!r}")
        if self.keep_best and not self.val_pairs:
            raise ValueError("keep_best needs validation pairs (--val-a / --val-b)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        for name in ("epochs", "batch_size", "checkpoint_every", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if (self.crop is None) == (self.resize is None):
            raise ValueError("give exactly one of crop and resize")
        size = self.crop if self.crop is not None else self.resize
        if size % 32:
            raise ValueError(f"crop / resize must be a multiple of 32, got {size}")
        from .layers import get_variant
        from .losses import FusionLoss

        get_variant(self.variant)
        FusionLoss(self.loss, without=self.loss_without, weights=self.loss_weights)  # checks the preset and the terms


def lr_factor(schedule: str, steps_per_epoch: int, total_steps: int):
    """Multiplier of the base lr after `step` optimiser steps."""
    if schedule == "official":
        return lambda step: 0.75 ** (step // steps_per_epoch)
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lambda step: 1.0


def rng_state() -> dict:
    """Python, numpy and torch RNG states, as types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, step: int, config: TrainConfig) -> None:
    """Everything a resumed run needs, written atomically."""
    state = {
        "model": model.state_dict(),
        "model_config": dict(model.config),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "rng": rng_state(),
        "train_config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),  # plain types only
    }
    atomic_write(path, lambda f: torch.save(state, f))


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict's tensors (names in order, bytes)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if world == 1:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def build_model(config: TrainConfig, device: torch.device):
    from .model import FusionMamba

    variant = {} if config.variant is None else {"variant": config.variant}
    if config.init_weights is not None:
        model = FusionMamba.from_pretrained(config.init_weights, preset=config.preset, map_location="cpu",
                                            backend=config.backend, **variant)
    else:
        model = FusionMamba.from_preset(config.preset, backend=config.backend, **{**config.model_config, **variant})
    return model.to(device)


def load_val_images(pairs) -> list[tuple[np.ndarray, np.ndarray]]:
    """The validation pairs [(a_path, b_path), ...] decoded once, as grey (Y) images."""
    return [(to_grey(load_image(a_path)), to_grey(load_image(b_path))) for a_path, b_path in pairs]


def mean_val_scores(fuser, images, metric_names) -> dict[str, float]:
    """Mean of each metric over grey (a, b) pairs fused by fuser(a, b) (scored like `fusionmamba compare`)."""
    from .report import score

    totals: dict[str, float] = {}
    for a, b in images:
        for name, value in score(a, b, fuser(a, b), metric_names).items():
            totals[name] = totals.get(name, 0.0) + value / len(images)
    return totals


def validate(model, images, metric_names) -> dict[str, float]:
    """Mean of each metric over the validation images; the model runs in eval mode without gradients."""
    from .inference import fuse

    return mean_val_scores(lambda a, b: fuse(model, a, b), images, metric_names)


def selection_score(val: dict[str, float], reference: dict[str, float], metric_names) -> float:
    """Mean over `metric_names` of val / reference (reference / val for metrics where lower is better)."""
    from .report import LOWER_IS_BETTER

    ratios = [reference[m] / val[m] if m in LOWER_IS_BETTER else val[m] / reference[m] for m in metric_names]
    return sum(ratios) / len(ratios)


def compute_loss(net, criterion, a: torch.Tensor, b: torch.Tensor, loss_on: str = "clamped", amp_dtype=None):
    """(loss, terms) of one batch; loss_on="clamped" clips the output to [0, 1] first, as the official recipe does.

    Clipping gives pixels outside [0, 1] no gradient; the official head adds 2 * (x1 + x2), so at
    initialisation most bright pixels are clipped. "unclamped" scores the raw output instead.
    """
    with torch.autocast(a.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        fused = net(a, b).float()
    if loss_on == "clamped":
        fused = fused.clamp(0, 1)
    return criterion(fused, a, b)


def train(config: TrainConfig) -> dict:
    """Run training; returns the last step's {"step", "loss", "checkpoint", "val"} (the last two are set on rank 0)."""
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    from .losses import FusionLoss

    config.validate()
    rank, world, device = _setup_distributed(config.device)
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        out_dir = Path(config.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs, _ = find_pairs(config.a_dir, config.b_dir)
        check_pair_sizes(pairs)
        dataset = PairDataset(pairs, crop=config.crop, resize=config.resize, augment=config.augment, seed=config.seed,
                              cache=config.cache_images)
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
        steps_per_epoch = len(sampler) // config.batch_size
        if steps_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} training pairs over {world} process(es) give fewer than one batch of {config.batch_size}"
            )
        total_steps = config.steps if config.steps is not None else config.epochs * steps_per_epoch

        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        model = build_model(config, device)
        model.train()
        criterion = FusionLoss(preset=config.loss, without=config.loss_without, weights=config.loss_weights).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config.schedule, steps_per_epoch, total_steps))
        amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[config.amp]
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None

        step = 0
        resume = config.resume
        if resume == "auto":
            resume = str(out_dir / "last.pt") if (out_dir / "last.pt").is_file() else None
        if resume is not None:
            step = _resume(resume, model, optimizer, scheduler, scaler)
        log_path = out_dir / "log.jsonl"
        val_metrics = tuple(dict.fromkeys(tuple(config.val_metrics) + tuple(config.keep_best)))
        val_images = reference = None
        best = {"step": None, "score": -math.inf}
        if rank == 0 and config.cache_images:
            _append_log(log_path, {"step": step, "cached_pairs": len(dataset), "cache_bytes": dataset.cache_bytes})
        if config.val_pairs and rank == 0:
            from .baselines import average_fuse_luma

            started = time.perf_counter()
            val_images = load_val_images(config.val_pairs)
            reference = mean_val_scores(average_fuse_luma, val_images, val_metrics)
            if config.keep_best and resume is not None:
                best = _previous_best(out_dir, config)
            _append_log(log_path, {"step": step, "val_reference": {"average": reference},
                                   "val_seconds": time.perf_counter() - started})

        net = model
        if world > 1:
            # Cross_block.0 gets no gradient: the decoder never uses the finest fused skip.
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=True)

        progress = tqdm(total=total_steps, initial=step, disable=rank != 0, desc="train", dynamic_ncols=True)
        last = {"step": step, "loss": None, "checkpoint": None, "val": None}
        while step < total_steps:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            indices = list(sampler)[(step % steps_per_epoch) * config.batch_size : steps_per_epoch * config.batch_size]
            # Its own generator keeps the global RNG (drop path) independent of when loaders are made.
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=config.batch_size, sampler=indices, drop_last=True,
                num_workers=config.num_workers, pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(config.seed + epoch),
            )
            waited = time.perf_counter()
            for a, b in loader:
                started = time.perf_counter()
                data_seconds = started - waited  # time spent waiting for this batch
                a, b = a.to(device, non_blocking=True), b.to(device, non_blocking=True)
                loss, terms = compute_loss(net, criterion, a, b, config.loss_on, amp_dtype)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                step += 1
                last["step"], last["loss"] = step, float(loss.detach())
                if rank == 0:
                    values = {k: float(v) for k, v in terms.items()}
                    progress.set_postfix(loss=f"{last['loss']:.4f}", **{k: f"{v:.4f}" for k, v in values.items()})
                    progress.update(1)
                    if step % config.log_every == 0 or step == total_steps:
                        _append_log(log_path, {"step": step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                                               "loss": last["loss"], **values, "time": time.time(),
                                               "step_seconds": time.perf_counter() - started,
                                               "data_seconds": data_seconds})
                if step % config.checkpoint_every == 0 or step == total_steps:
                    if rank == 0:
                        save_checkpoint(out_dir / "last.pt", model, optimizer, scheduler, scaler, step, config)
                        last["checkpoint"] = str(out_dir / "last.pt")
                if config.val_pairs and (step % config.val_every == 0 or step == total_steps) and rank == 0:
                    started = time.perf_counter()
                    last["val"] = validate(model, val_images, val_metrics)
                    record = {"step": step, "val": last["val"], "val_seconds": time.perf_counter() - started,
                              "val_ratio": {k: v / reference[k] if reference[k] else math.nan for k, v in last["val"].items()}}
                    message = ", ".join(f"{k} {v:.4f}" for k, v in last["val"].items())
                    if config.keep_best:
                        record["val_score"] = selection_score(last["val"], reference, config.keep_best)
                        record["best"] = record["val_score"] > best["score"]
                        message += f"; score {record['val_score']:.4f}" + (" (best)" if record["best"] else "")
                        if record["best"]:
                            best = {"step": step, "score": record["val_score"]}
                            model.save_pretrained(out_dir / "best")
                            info = {**best, "keep_best": list(config.keep_best), "val": last["val"],
                                    "val_reference": {"average": reference}}
                            atomic_write(out_dir / "best.json", lambda f: json.dump(info, f, indent=2), mode="w")
                    progress.write(f"step {step}: {message} ({record['val_seconds']:.1f} s)")
                    _append_log(log_path, record)
                if step >= total_steps:
                    break
                waited = time.perf_counter()
        progress.close()
        if rank == 0:
            model.save_pretrained(out_dir / "final")
        if config.weights_digest:
            digest = weights_digest(model)
            atomic_write(out_dir / f"weights_rank{rank}.sha256", lambda f: f.write(digest + "\n"), mode="w")
        if world > 1:
            dist.barrier()
        return last
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
        if config.threads is not None:
            torch.set_num_threads(threads)


def _previous_best(out_dir: Path, config: TrainConfig) -> dict:
    """The best step and score recorded by an earlier part of a resumed run, if it chose by the same metrics."""
    path = out_dir / "best.json"
    if path.is_file():
        info = json.loads(path.read_text())
        if info.get("keep_best") == list(config.keep_best):
            return {"step": info["step"], "score": info["score"]}
    return {"step": None, "score": -math.inf}


def _resume(path: str, model, optimizer, scheduler, scaler) -> int:
    """Load a checkpoint written by save_checkpoint into the training objects; returns its step."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return int(state["step"])
    except (RuntimeError, KeyError, TypeError, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: cannot resume from this checkpoint ({reason})") from None


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
