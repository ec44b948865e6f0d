"""Training, read top to bottom: the learning-rate schedule, the model and its optimizer, one step, a seeded
per-epoch data order, the accuracy check, the progress log, then the loop, which checkpoints every epoch and resumes
bit-exactly (resume.py), and ensembles of trained members. Multi-process via `torchrun` (DDP; gloo on CPU). The
settings and presets are in train_config.py.

    python -m randmask train "0.7-Shallow" --preset quick --out runs/0.7-Shallow
    torchrun --nproc_per_node=2 -m randmask train "0.7-Shallow" --preset paper --out runs/paper-0.7
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from randmask.core.device import choose_precision, default_device
from randmask.core.errors import RandmaskError
from randmask.core.models import Ensemble, build_model
from randmask.core.notation import MAX_ENSEMBLE, format_model, parse_model
from randmask.core.settings import openmp_wait_note
from randmask.core.stats import wilson_interval
from randmask.experiments.checkpoint import WEIGHTS_FILE, load_model, save_checkpoint
from randmask.experiments.data import load_uint8, pixel_mean
from randmask.experiments.resume import RESUME_FILE, read_resume, restore, save_resume
from randmask.experiments.train_config import TrainConfig, asdict_json, training_precision

LOG_FILE = "progress.jsonl"


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for a global step: a pure function of the step, so resuming needs no scheduler state."""
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch
    peak = max(1, round(cfg.warmup * total))
    return cfg.lr * (step / peak if step < peak else max(0.0, (total - step) / (total - peak)))


def model_and_optimizer(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The freshly initialised model (training-set mean inside, layout per cfg) and its SGD optimizer."""
    model = build_model(parse_model(cfg.notation), dataset=cfg.dataset, width=cfg.width, mask_seed=cfg.mask_seed,
                        seed=cfg.seed)
    model.pixel_mean.copy_(pixel_mean(cfg.dataset))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases: no weight decay
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return model, opt


def train_step(net: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig,
               amp: torch.dtype | None, lr: float, device: torch.device) -> tuple[float, int]:
    """One SGD step at learning rate lr on a batch: (mean loss, correct predictions)."""
    for group in opt.param_groups:
        group["lr"] = lr
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    if cfg.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = net(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), int((logits.argmax(1) == yb).sum().item())


def epoch_batches(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, epoch: int, rank: int = 0,
                  world: int = 1):
    """This epoch's shuffled, augmented batches for one process, drawn from a generator seeded by
    (seed, epoch): the same epoch always yields the same batches, which makes resume exact."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    n = len(x) - len(x) % world
    order = torch.randperm(len(x), generator=gen)[:n][rank::world]
    flips = torch.rand(len(order), generator=gen) < 0.5
    shifts = torch.randint(0, 9, (len(order), 2), generator=gen)
    local_batch = max(1, cfg.batch_size // world)
    for start in range(0, len(order), local_batch):
        idx = order[start:start + local_batch]
        xb = x.index_select(0, idx)  # as x[idx], 12x faster on a 128-image uint8 batch
        if cfg.augment:  # on the uint8 images (4x fewer bytes to move); crop and flip only move pixels
            xb = random_crop_flip(xb, shifts[start:start + local_batch], flips[start:start + local_batch],
                                  flip=cfg.dataset != "mnist")
        yield to_unit_floats(xb), y[idx]


_UNIT = torch.arange(256, dtype=torch.float32).div_(255)  # v / 255 as the CPU rounds it, for every uint8 v


def to_unit_floats(x: torch.Tensor) -> torch.Tensor:
    """uint8 images as floats in [0, 1], the CPU's x / 255 bit for bit on every device (a GPU divides by
    multiplying with 1/255, one rounding away on some values)."""
    if x.device.type == "cpu":
        return x.float().div_(255)
    return _UNIT.to(x.device, non_blocking=True)[x.long()]


def random_crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Zero-pad by `pad`, crop back at per-image offsets `shifts` (0..2·pad), mirror where `flips`.
    One gather of each image's pixels from the padded batch (3.8x faster than 4-way advanced indexing on a
    128-image uint8 batch, the same values)."""
    n, c, h, w = x.shape
    device = x.device
    shifts, flips = shifts.to(device), flips.to(device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = shifts[:, 0, None] + torch.arange(h, device=device)  # n × h rows of the padded image
    cols = shifts[:, 1, None] + torch.arange(w, device=device)  # n × w columns
    if flip:
        cols = torch.where(flips[:, None], cols.flip(-1), cols)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)


def where_batches_are_drawn(x: torch.Tensor, y: torch.Tensor,
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 training set where `epoch_batches` gathers and augments it: on a GPU the GPU itself
    (host-side batches took a quarter of a quick-preset step on an H200; the draws stay on the CPU
    generator, so the batches are the same bit for bit), else where it is."""
    return (x.to(device), y.to(device)) if device.type == "cuda" else (x, y)


EPOCH_CHECK_BATCH = 128  # on a CPU the per-epoch check is faster in cache-sized batches (bench/bench_core.py)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             device: torch.device | None = None, channels_last: bool = False,
             amp: torch.dtype | None = None) -> tuple[int, int]:
    """(correct, n) of a model on uint8 or [0,1] float images, in eval mode; the training flag is restored.
    `amp`: autocast dtype (None = fp32). Training's per-epoch check runs in the training precision, 2.1x
    faster in bf16 here (bench/bench_core.py); every accuracy a checkpoint states is measured in fp32."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(xb)
            correct += (logits.argmax(1).cpu() == y[start:start + batch_size]).sum().item()
    finally:
        model.train(was_training)
    return correct, len(x)


class _Log:
    """JSON-lines progress records (the app polls this file) plus an optional callback. Records logged before
    the file has a place (`path` None) are kept and written first once `to_file` gives it one."""

    def __init__(self, path: Path | None, callback: Callable[[dict], None] | None) -> None:
        self.path, self.callback, self.pending, self.keep = path, callback, [], True

    def __call__(self, event: str, **fields) -> None:
        record = {"event": event, "time": time.time(), **fields}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        elif self.keep:
            self.pending.append(record)
        if self.callback is not None:
            self.callback(record)

    def to_file(self, path: Path | None, *, final: bool = False) -> None:
        """Write to `path` from now on (None: no file); with `final`, a process without a file keeps nothing."""
        self.path = path
        self.keep = not final
        if final and path is None:
            self.pending = []
        if path is not None:
            with open(path, "a") as f:
                f.writelines(json.dumps(record) + "\n" for record in self.pending)
            self.pending = []


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def train(cfg: TrainConfig, out: str | Path, progress: Callable[[dict], None] | None = None,
          show_bar: bool | None = None) -> dict:
    """Train one model (or every member of an EN ensemble) into checkpoint folder `out`; resumes if possible.

    Returns the final config dict (with clean accuracy and training time)."""
    spec = parse_model(cfg.notation)
    out = Path(out)
    if spec.ensemble > 1:
        return _train_ensemble(cfg, out, progress, show_bar)
    rank, world = _dist_info()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() \
        else default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    resume_path = out / RESUME_FILE  # checked first: a damaged one is refused before the data are loaded
    state = read_resume(resume_path, cfg) if os.path.lexists(resume_path) else None
    # 'stage' records before the first step: the app says what a starting job is doing, not only that it starts.
    # Nothing is written before the model is built (which refuses a bad notation, seed, width or data set), and a
    # new --out folder appears only once the data and the model exist: a refused setting leaves nothing behind.
    # Until then the records wait in memory; the app's job folder, which exists, gets them as they come.
    log = _Log(None, progress if rank == 0 else None)
    log("stage", what="building the model")
    model, opt = model_and_optimizer(cfg, device)
    config = model.config
    if state is not None:  # a resume file that does not fit is refused before anything is written
        restore(state, resume_path, cfg, model, opt)
    elif (out / WEIGHTS_FILE).exists() and rank == 0:
        raise RandmaskError(f"{out} already holds a finished model; choose another --out")
    log.to_file(out / LOG_FILE if rank == 0 and out.is_dir() else None)
    log("stage", what="loading the training images")
    x_train, y_train = load_uint8(cfg.dataset, "train")
    if cfg.train_n:
        x_train, y_train = x_train[:cfg.train_n], y_train[:cfg.train_n]
    x_train, y_train = where_batches_are_drawn(x_train, y_train, device)
    log("stage", what="loading the test images")
    x_test, y_test = load_uint8(cfg.dataset, "test")
    if cfg.eval_n:
        x_test, y_test = x_test[:cfg.eval_n], y_test[:cfg.eval_n]

    # the folder appears only once the data and the model exist: a refused setting leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    log.to_file(out / LOG_FILE if rank == 0 else None, final=True)
    log("stage", what="choosing the training precision")

    start_epoch, train_time, history = 0, 0.0, []
    if state is not None and "autocast" in state:
        amp = None if state["autocast"] == "fp32" else getattr(torch, state["autocast"])
        why = "a resumed run keeps the precision it started with"
    elif state is not None:  # written before the probe existed: it trained under oneDNN's report alone
        amp = choose_precision(device, cfg.precision).dtype
        why = "a resumed run from before the precision probe: oneDNN's report alone"
    else:
        choice = training_precision(cfg, device, world)
        amp, why = choice.dtype, choice.reason
    if world > 1 and device.type == "cpu":  # every process must train in the precision rank 0 measured
        chosen = torch.tensor([{None: 0, torch.bfloat16: 1, torch.float16: 2}[amp]])
        dist.broadcast(chosen, 0)
        amp = (None, torch.bfloat16, torch.float16)[int(chosen)]
    if state is not None:
        start_epoch, train_time, history = state["epoch"], state["train_time_s"], state["history"]
        log("resume", epoch=start_epoch)

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = math.ceil((len(x_train) - len(x_train) % world) / world / max(1, cfg.batch_size // world))
    log("start", config=asdict_json(cfg), world_size=world, device=str(device),
        autocast=str(amp).removeprefix("torch.") if amp else "fp32", precision_reason=why,
        openmp_wait=openmp_wait_note(), steps_per_epoch=steps_per_epoch,
        start_epoch=start_epoch)

    # step records at least ~10 times an epoch, so a small job (a few steps an epoch) still shows movement
    log_every = max(1, min(cfg.log_every, steps_per_epoch // 10))
    log("stage", what="the first training steps")
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True)) if _main_thread() else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            began, net_loss, seen, hits = time.time(), 0.0, 0, 0
            net.train()
            bar = tqdm(epoch_batches(x_train, y_train, cfg, epoch, rank, world), total=steps_per_epoch,
                       desc=f"{config.notation} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=(rank != 0) if show_bar is None else not show_bar)
            for i, (xb, yb) in enumerate(bar):
                step_loss, step_hits = train_step(net, opt, xb, yb, cfg, amp, lr_at(cfg, epoch * steps_per_epoch + i,
                                                                                  steps_per_epoch), device)
                net_loss += step_loss * len(yb)
                hits += step_hits
                seen += len(yb)
                bar.set_postfix(loss=f"{net_loss / seen:.3f}")
                if (i + 1) % log_every == 0 or i == 0:  # the first at once: the app sees the steps begin
                    log("step", epoch=epoch + 1, epochs=cfg.epochs, step=i + 1, steps=steps_per_epoch,
                        loss=net_loss / seen, lr=opt.param_groups[0]["lr"], images=seen * world,
                        elapsed_s=round(time.time() - began, 3))
                if stop["now"]:
                    raise KeyboardInterrupt
            train_time += time.time() - began
            correct, n = accuracy(model, x_test, y_test, device=device, channels_last=cfg.channels_last, amp=amp,
                                  batch_size=EPOCH_CHECK_BATCH if device.type == "cpu" else 500)
            record = {"epoch": epoch + 1, "epochs": cfg.epochs, "train_loss": net_loss / seen,
                      "train_acc": hits / seen, "test_acc": correct / n, "test_n": n,
                      "lr": opt.param_groups[0]["lr"], "train_time_s": round(train_time, 1)}
            history.append(record)
            if rank == 0:  # saved before the record goes out, so a reader of the log can always resume
                save_resume(resume_path, cfg, epoch + 1, model, opt, train_time, history,
                            str(amp).removeprefix("torch.") if amp else "fp32")
            log("epoch", **record)
    except KeyboardInterrupt:
        log("cancelled", epoch=len(history))
        raise
    except Exception as exc:
        log("error", message=str(exc))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    result = {}
    if rank == 0:
        correct, n = accuracy(model, x_test, y_test, device=device, channels_last=cfg.channels_last)
        low, high = wilson_interval(correct, n)
        model.to(memory_format=torch.contiguous_format)
        result = {"recipe": asdict_json(cfg), "clean_accuracy": correct / n, "clean_accuracy_n": n,
                  "clean_accuracy_ci95": [low, high], "train_time_s": round(train_time, 1),
                  "epochs_trained": cfg.epochs, "world_size": world, "device": str(device),
                  "threads": torch.get_num_threads(), "host_cpus": os.cpu_count(),
                  "autocast": str(amp).removeprefix("torch.") if amp else "fp32", "history": history}
        model.config = config
        save_checkpoint(model, out, extra=result)
        resume_path.unlink(missing_ok=True)
        log("done", clean_accuracy=correct / n, n=n, train_time_s=round(train_time, 1), checkpoint=str(out))
    if world > 1:
        dist.barrier()
    return result


def _train_ensemble(cfg: TrainConfig, out: Path, progress, show_bar) -> dict:
    """EN: member i is the single model with mask_seed + i and seed + i, trained in out/members/i."""
    spec = parse_model(cfg.notation)
    member_notation = format_model(spec.member())
    folders = []
    for i in range(spec.ensemble):
        folder = out / "members" / str(i)
        if not (folder / WEIGHTS_FILE).exists():
            train(replace(cfg, notation=member_notation, mask_seed=cfg.mask_seed + i, seed=cfg.seed + i), folder,
                  progress, show_bar)
        folders.append(folder)
    return assemble_ensemble(folders, out, eval_n=cfg.eval_n)


def assemble_ensemble(folders: list[str | Path], out: str | Path, eval_n: int | None = None) -> dict:
    """Join trained members (same notation, width and data set; consecutive seeds, and mask seeds when masked)
    into one EN checkpoint."""
    if not 2 <= len(folders) <= MAX_ENSEMBLE:
        raise RandmaskError(f"an EN joins 2 to {MAX_ENSEMBLE} members, not {len(folders)}")
    if eval_n is not None and eval_n < 1:  # 0 must not quietly mean every image
        raise RandmaskError(f"--eval-n must be at least 1 (leave it out for every test image), not {eval_n}")
    members = [load_model(f) for f in folders]
    first = members[0][1]
    for _, conf in members:
        if (conf["notation"], conf["width"], conf["dataset"]) != (first["notation"], first["width"], first["dataset"]):
            raise RandmaskError("ensemble members must share notation, width and data set")
    spec = parse_model(first["notation"])
    masked = bool(spec.masks)  # an unmasked member's mask seed means nothing: only its seed must follow
    for i, (_, conf) in enumerate(members):
        if conf["seed"] != first["seed"] + i or (masked and conf["mask_seed"] != first["mask_seed"] + i):
            raise RandmaskError("ensemble members must have consecutive seeds (and, when masked, mask seeds), in order")
    notation = format_model(type(spec)(spec.arch, spec.masks, len(members)))
    model = build_model(notation, dataset=first["dataset"], width=first["width"], mask_seed=first["mask_seed"],
                        seed=first["seed"])
    assert isinstance(model, Ensemble)
    for slot, (member, _) in zip(model.members, members, strict=True):
        slot.load_state_dict(member.state_dict())
    x_test, y_test = load_uint8(first["dataset"], "test")
    if eval_n is not None:
        x_test, y_test = x_test[:eval_n], y_test[:eval_n]
    correct, n = accuracy(model, x_test, y_test)
    low, high = wilson_interval(correct, n)
    result = {"clean_accuracy": correct / n, "clean_accuracy_n": n, "clean_accuracy_ci95": [low, high],
              "members": [_shown(f) for f in folders],
              "member_accuracies": [c.get("clean_accuracy") for _, c in members],
              "train_time_s": round(sum(c.get("train_time_s", 0.0) for _, c in members), 1),
              "recipe": first.get("recipe")}
    save_checkpoint(model, out, extra=result)
    return result


def _shown(folder: str | Path) -> str:
    """A member's folder as recorded: relative to the working directory when under it (no machine paths in a
    shipped config), else absolute."""
    path = Path(folder).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
