"""Attack benchmark: ours against torchattacks 3.5.1 on the same model, images, batch and step budget.

    python bench/bench_attacks.py [--model CHECKPOINT_OR_NOTATION] [--n 128] [--batch 128] [--pgd-steps 20]
                                  [--cw-budget 300] [--cw-search 5] [--cw-n 64] [--rounds 5] [--threads 2]
                                  [--targets N] [--only pgd|fgsm|transfer|cw]

Without --model: the zoo's Normal ResNet-18 (assets/zoo/cifar10/Normal_ResNet-18) when it is there, else a
small CNN is trained (3 epochs on 10000 CIFAR-10 training images, about a minute on a CPU; a trained model
makes the CW comparison meaningful). Images: the first --n test images it classifies correctly.

FGSM (eps 8) and PGD (eps 8, step 2, --pgd-steps steps; without a random start, the paper's PGD, against
torchattacks.BIM, and with one against torchattacks.PGD, whose start is drawn from another generator, so its
success is compared with our exact mode's): ours in its default fast mode, ours with exact=True
(bit-identical to torchattacks) and torchattacks, timed interleaved round by round and
compared by their best round (wall time on CUDA; on a CPU the process's CPU time, less moved by other jobs).
Target: ours/torchattacks time ratio <= 0.67 for `attack(x, y)` (images only, as torchattacks returns) with
success rates (measured by the model itself on each attack's images) within 1 point and every image inside
its eps-ball on [0, 1]; `attack.run` also measures logits, success and norms (one more forward pass).
On CUDA, ours also runs without its CUDA graphs (the eager fast path), to show what the graphs add.
Transfer: the evaluation of --targets zoo models on one crafted PGD set, `predict` fast (cached fast views)
against exact (each model itself, NCHW, no_grad), with the accuracies each gives.
CW (kappa 0): torchattacks.CW runs --cw-budget Adam steps at c=1 with no search over c and returns the clean
image when it fails; ours splits the same budget into --cw-search binary-search rounds and reports failures.
Printed: success rates as measured on the returned images, how many images torchattacks returned unchanged,
and mean l2 (0-255 units) over each attack's successes and over images both fooled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from randmask.attacks import CW, FGSM, PGD, margin
from randmask.core.device import cpu_model, synchronize


def small_cnn() -> nn.Module:
    from randmask.experiments.data import load_tensors

    x, y = load_tensors("cifar10", "train", n=10000)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            loss = nn.functional.cross_entropy(model(x[idx] - 0.45), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _Shift(model).eval()


class Tally:
    """A count that every deep copy shares: the fast path attacks a deep copy of the model (fast_view), whose
    calls a plain attribute would count in the copy and never report (the CW row read 0 model calls)."""

    def __init__(self) -> None:
        self.images = 0

    def __deepcopy__(self, memo: dict) -> Tally:
        return self


class Counted(nn.Module):
    """Counts images passed through the model (forward passes x batch size), in it and in all its copies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.tally = model, Tally()

    @property
    def images(self) -> int:
        return self.tally.images

    @images.setter
    def images(self, value: int) -> None:
        self.tally.images = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tally.images += len(x)
        return self.model(x)


class _Shift(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - 0.45)


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared CPU the second ignores other jobs' load."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder or notation (default: train a small CNN)")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--cw-budget", type=int, default=300, help="Adam steps per image for both CWs")
    parser.add_argument("--cw-search", type=int, default=5, help="our binary-search rounds within the budget")
    parser.add_argument("--cw-n", type=int, default=64, help="images for the CW comparison")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--targets", type=int, default=6, help="zoo models for the transfer evaluation")
    parser.add_argument("--only", choices=["pgd", "fgsm", "transfer", "cw"], help="run one comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torchattacks
    except ImportError:
        sys.exit("needs torchattacks: pip install --no-deps torchattacks==3.5.1")

    from randmask.core.device import default_device
    from randmask.experiments.data import load_tensors

    device = default_device()
    zoo_default = Path(__file__).resolve().parents[1] / "assets" / "zoo" / "cifar10" / "Normal_ResNet-18"
    if not args.model and (zoo_default / "config.json").exists():
        args.model = str(zoo_default)
    if args.model:
        from randmask.core.errors import RandmaskError
        from randmask.experiments.checkpoint import load_any

        try:
            model, config = load_any(args.model, device)
        except RandmaskError as exc:
            sys.exit(f"error: {exc}")
        name, dataset = config["notation"], config.get("dataset", "cifar10")
    else:
        print("training a small CNN on 10000 CIFAR-10 training images ...", flush=True)
        model, name, dataset = small_cnn().to(device), "small CNN", "cifar10"
    model.eval()
    x, y = load_tensors(dataset, "test", n=min(10000, 4 * args.n))
    with torch.no_grad():
        ok = torch.cat([model(x[i:i + 512].to(device)).argmax(1).cpu() == y[i:i + 512]
                        for i in range(0, len(x), 512)])
    x, y = x[ok][:args.n].to(device), y[ok][:args.n].to(device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device {device}, model {name}, {len(x)} correctly classified test images, batch {args.batch}, "
          f"threads {torch.get_num_threads()}; {hardware}")

    if args.only in (None, "fgsm"):
        compare_gradient_attack("FGSM", FGSM(model, eps=8), FGSM(model, eps=8, exact=True),
                                torchattacks.FGSM(model, eps=8 / 255), 8, model, x, y, args, device)
    if args.only in (None, "pgd"):
        steps = args.pgd_steps
        # the paper's PGD (no random start) is torchattacks' BIM: the same algorithm, so the same images
        compare_gradient_attack(
            f"PGD eps 8, step 2, {steps} steps (torchattacks.BIM)", PGD(model, eps=8, step=2, steps=steps),
            PGD(model, eps=8, step=2, steps=steps, exact=True),
            torchattacks.BIM(model, eps=8 / 255, alpha=2 / 255, steps=steps), 8, model, x, y, args, device)
        # with a random start torchattacks draws from torch's global generator, ours from its own seeded one:
        # success is compared with our exact mode, which draws the same start as our fast one
        compare_gradient_attack(
            f"PGD-rs eps 8, step 2, {steps} steps, random start (torchattacks.PGD)",
            PGD(model, eps=8, step=2, steps=steps, random_start=True),
            PGD(model, eps=8, step=2, steps=steps, random_start=True, exact=True),
            torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=steps, random_start=True), 8, model, x, y,
            args, device, same_draws=False)
    if args.only in (None, "transfer"):
        compare_transfer(model, x, y, args, device)
    if args.only in (None, "cw"):
        compare_cw(model, x, y, args, torchattacks)


def interleaved(variants: dict, rounds: int, device: torch.device) -> tuple[dict, dict, str]:
    """Best-of-rounds (wall, used) seconds per variant, run interleaved (order reversed every other round)."""
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list] = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            times[name].append(timed(variants[name], device))
    # on CUDA compare wall time; on a CPU, the process's CPU time (robust to other jobs on the machine)
    pick = 0 if device.type == "cuda" else 1
    # the minimum over rounds: the least disturbed run is the best estimate of an attack's own cost
    wall = {name: min(t[0] for t in ts) for name, ts in times.items()}
    used = {name: min(t[pick] for t in ts) for name, ts in times.items()}
    return wall, used, "wall" if pick == 0 else "CPU"


def fooled_rate(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():  # the model itself, NCHW: the same judge for every attack's images
        logits = torch.cat([model(adv[i:i + 256]) for i in range(0, len(adv), 256)])
    return (logits.argmax(1) != y).float().mean().item()


def compare_gradient_attack(title, ours, exact, theirs, eps, model, x, y, args, device, same_draws=True) -> None:
    def batched(attack, out=None):
        def go():
            advs = [attack(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, len(x), args.batch)]
            if out is not None:
                out[:] = advs
        return go

    images: dict[str, list] = {"ours": [], "ours exact": [], "torchattacks": []}
    variants = {"ours": batched(ours, images["ours"]), "ours exact": batched(exact, images["ours exact"]),
                "torchattacks": batched(theirs, images["torchattacks"]),
                # images plus logits, success and norms: one more forward pass per batch
                "ours.run": lambda: ours.run(x, y, batch_size=args.batch)}
    if device.type == "cuda":  # what the CUDA graphs add: the same fast path, eager
        variants["ours eager"] = without_cuda_graphs(batched(ours))
    wall, used, kind = interleaved(variants, args.rounds, device)
    print(f"{title}, {len(x)} images, best of {args.rounds}: "
          + ", ".join(f"{name} {wall[name]:.3f}s wall / {used[name]:.3f}s {kind}" for name in variants))
    success = {}
    for name, advs in images.items():
        adv = torch.cat(advs)
        inside = bool(adv.min() >= 0 and adv.max() <= 1 and ((adv - x).abs().amax() * 255 <= eps + 1e-4))
        success[name] = fooled_rate(model, adv, y)
        print(f"  {name:<13} success {100 * success[name]:.1f}%, every image in its eps-ball on [0,1]: {inside}")
    identical = torch.equal(torch.cat(images["ours exact"]), torch.cat(images["torchattacks"]))
    ratio = used["ours"] / used["torchattacks"]
    judge = "torchattacks" if same_draws else "ours exact"  # the same random draws as ours, or none at all
    gap = 100 * abs(success["ours"] - success[judge])
    name = title.split()[0]
    print(f"{name} time ratio ours/torchattacks = {ratio:.3f} ({kind} time; target <= 0.67: "
          f"{'met' if ratio <= 0.67 else 'MISSED'}); success ours {100 * success['ours']:.1f}% vs {judge} "
          f"{100 * success[judge]:.1f}% (gap {gap:.1f} points; target <= 1: {'met' if gap <= 1 else 'MISSED'})")
    print(f"  wall-time ratio {wall['ours'] / wall['torchattacks']:.3f}; ours.run/torchattacks "
          f"{used['ours.run'] / used['torchattacks']:.3f}; exact/torchattacks "
          f"{used['ours exact'] / used['torchattacks']:.3f}, exact images identical to torchattacks': {identical}")
    if "ours eager" in used:
        eager = used["ours eager"] / used["torchattacks"]
        print(f"  without CUDA graphs (eager fast path)/torchattacks {eager:.3f}")


def without_cuda_graphs(fn):
    from randmask.attacks import cuda_graphs

    def go():
        cuda_graphs.ENABLED = False
        try:
            fn()
        finally:
            cuda_graphs.ENABLED = True
    return go


def compare_transfer(model, x, y, args, device) -> None:
    from randmask.attacks import fast_view
    from randmask.experiments.checkpoint import load_any
    from randmask.experiments.evaluate import predict

    zoo = Path(__file__).resolve().parents[1] / "assets" / "zoo" / "cifar10"
    folders = sorted(p for p in zoo.iterdir() if (p / "config.json").exists()) if zoo.is_dir() else []
    if not folders:
        print("transfer: no zoo models under assets/zoo/cifar10; skipped")
        return
    targets = {p.name: load_any(str(p), device)[0].eval() for p in folders[:args.targets]}
    adv = PGD(model, eps=8, step=2, steps=args.pgd_steps)(x, y)
    start = time.process_time()
    for target in targets.values():
        fast_view(target, adv)
    build = time.process_time() - start

    def evaluate(exact):
        def go():
            for target in targets.values():
                predict(target, adv, batch_size=args.batch, exact=exact)
        return go

    wall, used, kind = interleaved({"fast": evaluate(False), "exact": evaluate(True)}, args.rounds, device)
    changed = sum(int((predict(t, adv, exact=False).argmax(1) != predict(t, adv, exact=True).argmax(1)).sum())
                  for t in targets.values())
    print(f"transfer evaluation of {len(targets)} zoo targets on {len(adv)} PGD images, best of {args.rounds}: "
          f"fast {used['fast']:.3f}s / exact {used['exact']:.3f}s {kind} (ratio {used['fast'] / used['exact']:.3f}; "
          f"wall {wall['fast'] / wall['exact']:.3f}); fast views built once in {build:.2f}s CPU; "
          f"predictions that differ: {changed} of {len(adv) * len(targets)}")


def compare_cw(model, x, y, args, torchattacks) -> None:
    xc, yc = x[:args.cw_n], y[:args.cw_n]
    steps = max(args.cw_budget // args.cw_search, 1)
    counted = Counted(model).eval()  # torchattacks restores a wrapper's train flag recursively: keep it eval
    start = time.perf_counter()
    res = CW(counted, kappa=0, search=args.cw_search, steps=steps, lr=0.01, c=1.0).run(xc, yc, batch_size=args.batch)
    t_cw, calls_ours = time.perf_counter() - start, counted.images / len(xc)
    counted.images = 0
    start = time.perf_counter()
    their_adv = torch.cat([torchattacks.CW(counted, c=1, kappa=0, steps=args.cw_budget, lr=0.01)(
        xc[i:i + args.batch], yc[i:i + args.batch]) for i in range(0, len(xc), args.batch)])
    t_tcw, calls_theirs = time.perf_counter() - start, counted.images / len(xc)
    assert not any(m.training for m in model.modules()), "a CW run left the model in training mode"
    with torch.no_grad():
        their_logits = torch.cat([model(their_adv[i:i + 512]) for i in range(0, len(their_adv), 512)])
    their_ok = margin(their_logits, yc) > 0
    unchanged = (their_adv == xc).flatten(1).all(1)
    their_l2 = ((their_adv - xc).flatten(1) * 255).norm(dim=1)
    both = res.success & their_ok

    def mean(t: torch.Tensor) -> float:
        return t.mean().item() if len(t) else float("nan")

    print(f"CW kappa 0, {args.cw_budget} Adam steps per image, lr 0.01, {len(xc)} images:")
    print(f"  ours        ({args.cw_search} x {steps} steps, search over c): success {res.success_rate:.3f}, "
          f"mean l2 {mean(res.l2[res.success]):.2f}, failures reported {int((~res.success).sum())}, "
          f"{calls_ours:.0f} model calls per image (early abort), {t_cw:.1f}s")
    print(f"  torchattacks (c=1, no search): success {their_ok.float().mean().item():.3f}, "
          f"mean l2 {mean(their_l2[their_ok]):.2f}, returned unchanged {int(unchanged.sum())} "
          f"(silently, as if adversarial), {calls_theirs:.0f} model calls per image (early abort), {t_tcw:.1f}s")
    print(f"  on the {int(both.sum())} images both fool: mean l2 ours {mean(res.l2[both]):.2f} vs torchattacks "
          f"{mean(their_l2[both]):.2f}; success ratio ours/torchattacks = "
          f"{res.success_rate / max(their_ok.float().mean().item(), 1e-9):.3f}")


if __name__ == "__main__":
    main()
