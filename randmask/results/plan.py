"""The reproduction plan: which protocol runs on which zoo models with which sample sizes (PRESETS), one
`Experiment` per table or figure of the paper, and where their results land (results/<key>.csv).

Every experiment names the zoo models it needs; one whose models are not trained yet is listed as pending in the
report instead of failing the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from randmask.core import safe_files
from randmask.core.notation import parse_ref
from randmask.experiments import corruptions, protocols
from randmask.experiments.data import load_tensors
from randmask.results.paper import RELATION_SEEDS, twin_key
from randmask.results.zoo import ENSEMBLES, ZOO, Zoo, zoo_name

StageProgress = Callable[[str, int, int], None]  # (experiment key, done, total)

PRESETS = {
    # paper: 5000 images for FGSM/PGD, 1000 for CW, 5000 for shuffle, the full test set for noise
    # n_pool: test images to draw from (None = the whole test set)
    "paper": dict(n_pool=None, n=5000, n_cw=1000, n_whitebox=10000, n_noise=10000, n_shuffle=5000, n_beyond=1000,
                  cw="CW40", square="Square{eps}", apgd="APGD{eps}", beyond_eps=(4, 8, 16), shuffle_confidence=0.99),
    "quick": dict(n_pool=None, n=500, n_cw=100, n_whitebox=500, n_noise=2000, n_shuffle=500, n_beyond=200,
                  cw="CW40(search=10, steps=100)", square="Square{eps}(queries=1000)", apgd="APGD{eps}(steps=50)",
                  # at eps 16 both attacks take every net to ~0%: smaller budgets show where the nets differ
                  beyond_eps=(4, 8, 16),
                  # label smoothing 0.1 caps our quick nets' softmax near 0.9: none reaches the paper's 0.99
                  shuffle_confidence=0.8),
}
TABLE2_TARGETS = ["Normal ResNet-18", "0.3-Shallow", "0.5-Shallow", "0.7-Shallow", "0.85-Shallow", "0.9-Shallow",
                  "0.5-Deep", "0.7-Deep", "0.5-ShallowDC", "0.5-ShallowSM", "0.9-Shallow×2", "0.85-ShallowEN"]
WHITEBOX_SMALL = 30  # points; the paper calls its own largest PGD gain in Table 4 (+25.0, 0.7-Shallow PGD2) small
NOISE_MODELS = ["Normal ResNet-18", "0.5-Shallow", "0.7-Shallow", "0.9-Shallow"]
FIGURE7_ATTACKS = ["FGSM16", "PGD16", "CW40"]


def wider(notations: list[str]) -> list[str]:
    """The width ladder's zoo names for these notations (issue 34): Table 4 and the noise curves measure them too."""
    return [e.name for e in ZOO if e.role == "width ladder" and e.notation in notations]


# every transfer table also gets the controls and the rest of Table 7 (zoo stages 5-7) as they land; an EN's
# members stay out (a Normal member's label would collide with the baseline's), the EN itself is a target
TRANSFER_TARGETS = list(dict.fromkeys([*(zoo_name(n) for n in TABLE2_TARGETS),
                                       *(e.name for e in ZOO if e.stage >= 5 and not e.role.startswith("EN member")),
                                       *ENSEMBLES]))
# the accuracy-matched Normals of each masked net, in zoo order: one stopped early on (almost) all training images,
# and those trained as long as the masked nets (the full schedule on fewer images, or at a narrower width)
ACCURACY_CONTROLS = {m: sorted((e for e in ZOO if e.matched_to == m), key=lambda e: e.trained_as_long)
                     for m in dict.fromkeys(e.matched_to for e in ZOO if e.matched_to)}
# the early-stopped one: the control of Table 4, the APGD/Square check and Figure 7's diamonds
MATCHED = {m: early[0] for m, controls in ACCURACY_CONTROLS.items()
           if (early := [e for e in controls if not e.trained_as_long])}
# and the resampled (dropout) twin of the fixed mask
RESAMPLED = {"0.7-Shallow": "0.7-ShallowDropout"}
CONTROL_SOURCES = ["table2_transfer", "table11_transfer"]  # DenseNet-121 and VGG-19, as the issue asks
CONTROL_ATTACKS = ["FGSM16", "PGD16", "CW40"]


@dataclass
class Experiment:
    key: str
    title: str
    paper_table: int | None
    needs: list[str]  # zoo names that must exist
    wants: list[str] = field(default_factory=list)  # zoo names used when present
    run: Callable | None = None
    own_section: bool = True  # False: another section of the report presents its results
    transfer: TransferCells | None = None  # an experiment that is one protocols.transfer: its cells


@dataclass(frozen=True)
class TransferCells:
    """An experiment that is one protocols.transfer call, in the parts a cluster runs as cells of their own
    (reproduce --ray): the crafting of each attack against the source, the evaluation of each target. `run` is
    the experiment's run in one process; the cells call the same functions it does."""

    source: str  # zoo name
    source_name: str  # as the rows name it
    targets: tuple[str, ...]  # zoo names, each used when present, in this order
    attacks: tuple[str, ...]
    options: dict  # protocols.transfer's other keywords (n, n_cw, dataset, protocol, paper_names)
    pool: str = "cifar10"  # the data set whose test images are the pool
    n_pool: int | None = None
    cache: Path | None = None

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        return load_tensors(self.pool, "test", n=self.n_pool)

    def present(self, zoo: Zoo) -> list[str]:
        return [n for n in self.targets if zoo.has(n)]

    def run(self, zoo: Zoo, x: torch.Tensor, y: torch.Tensor, progress) -> list[dict]:
        """The whole experiment in this process; (x, y): the CIFAR-10 pool (another data set's is loaded)."""
        if self.pool != "cifar10":
            x, y = self.images()
        targets = {zoo.label(n): zoo.model(n) for n in self.present(zoo)}
        return protocols.transfer(zoo.model(self.source), targets, list(self.attacks), x, y,
                                  source_name=self.source_name, progress=progress, cache=self.cache, **self.options)

    def craft(self, zoo: Zoo, attack: str, x: torch.Tensor, y: torch.Tensor) -> protocols.TransferSets:
        """One attack's cell: its crafted set, as `run` crafts it (the same images, seed and batch size)."""
        return protocols.transfer_sets(zoo.model(self.source), [attack], x, y, source_name=self.source_name,
                                       cache=self.cache, **self.options)


# Black-box transfer, one experiment per source: (key, title, source in the zoo, the paper's name, paper table).
# Verdicts and Figure 7 use the first source present: DenseNet-121 is the paper's main one (Table 2 is drawn from
# its Table 7); VGG-19 (Table 11) and a second Normal ResNet-18 (Table 8) are cheaper to train here.
TRANSFER_SOURCES = [
    ("table2_transfer", "Table 2 · transfer from DenseNet-121 (the paper's Tables 2 and 7)",
     zoo_name("DenseNet-121"), "DenseNet-121", 7),
    ("table11_transfer", "Table 11 · transfer from VGG-19", zoo_name("VGG-19"), "VGG-19", 11),
    ("table8_transfer", "Table 8 · transfer from another ResNet-18 (Normal, seed 1)",
     zoo_name("Normal ResNet-18@s1m0"), "ResNet-18", 8),
    ("table9_transfer", "Table 9 · transfer from ResNet-50", zoo_name("ResNet-50"), "ResNet-50", 9),
    ("table10_transfer", "Table 10 · transfer from SENet-18", zoo_name("SENet-18"), "SENet-18", 10),
]


def transfer_attacks(settings: dict) -> list[str]:
    """The attacks every black-box transfer table crafts against its source (TRANSFER_SOURCES)."""
    return ["FGSM16", "PGD16", "PGD32", settings["cw"]]


def experiments(settings: dict, cache: Path | None = None) -> list[Experiment]:
    """The plan: which protocol, on which zoo models, with which sizes; crafted sets are reused from `cache`."""
    s = settings
    densenet, mnist_densenet = zoo_name("DenseNet-121"), zoo_name("DenseNet-121", "mnist")
    normal = zoo_name("Normal ResNet-18")

    def transfer_from(source: str, source_name: str) -> TransferCells:
        return TransferCells(source, source_name, tuple(n for n in TRANSFER_TARGETS if n != source),
                             tuple(transfer_attacks(s)), {"n": s["n"], "n_cw": s["n_cw"], "dataset": "cifar10",
                                                          "paper_names": {s["cw"]: "CW40"}},
                             n_pool=s.get("n_pool"), cache=cache)

    table1 = TransferCells(zoo_name("Normal ResNet-18@s1m0"), "naturally trained net",
                           (normal, zoo_name("0.85-Shallow"), zoo_name("0.85-ShallowEN")),
                           tuple(protocols.MADRY_ATTACKS), {**protocols.MADRY, "n": s["n"], "dataset": "cifar10"},
                           n_pool=s.get("n_pool"), cache=cache)
    table6 = TransferCells(mnist_densenet, "DenseNet-121",
                           tuple(zoo_name(n, "mnist") for n in ("Normal ResNet-18", "0.5-Shallow", "0.7-Shallow",
                                                                "0.9-Shallow")),
                           (protocols.MNIST_ATTACK,), {**protocols.MNIST, "n": s["n"]}, pool="mnist",
                           n_pool=s.get("n_pool"), cache=cache)

    def table3(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in (normal, zoo_name("0.7-Shallow"))}
        return corruptions.shuffle(models, x, y, n=s["n_shuffle"], min_confidence=s.get("shuffle_confidence", 0.99),
                                 dataset="cifar10", progress=progress)

    def table4(zoo: Zoo, x, y, progress):
        names = [normal, zoo_name("0.5-Shallow"), zoo_name("0.7-Shallow"), *table4_controls, *table4_wider]
        models = {zoo.label(n): zoo.model(n) for n in names if zoo.has(n)}
        return protocols.whitebox(models, list(protocols.WHITEBOX_ATTACKS), x[:s["n_whitebox"]],
                                  y[:s["n_whitebox"]], dataset="cifar10", progress=progress, cache=cache)

    def table5(zoo: Zoo, x, y, progress):
        sources = {zoo.label(n): zoo.model(n) for n in (normal, zoo_name("0.5-Shallow"), zoo_name("0.7-Shallow"))
                   if zoo.has(n)}
        twins = [twin_key(n, r) for n, r in (("Normal ResNet-18", "other init"), ("0.7-Shallow", "other init"),
                                             ("0.7-Shallow", "DIF"))]
        plan = {**{ref: zoo_name(ref) for ref in twins}, "DenseNet-121": densenet, "VGG-19": zoo_name("VGG-19")}
        relation_of = {seeds: relation for relation, seeds in RELATION_SEEDS.items()}
        targets = {label: zoo.model(n) for label, n in plan.items() if zoo.has(n)}
        rows = protocols.graybox(sources, targets, x, y, n=s["n"], dataset="cifar10", progress=progress,
                                 cache=cache)
        for row in rows:  # the paper's columns name a target by its notation plus what sets it apart (relation)
            ref = parse_ref(row["target"])
            if (ref.seed, ref.mask_seed) in relation_of:
                row["relation"] = relation_of[(ref.seed, ref.mask_seed)]
            elif row["metric"] != "clean_accuracy":
                row["relation"] = protocols.relation(zoo[zoo_name(row["source"])][1], zoo[plan[row["target"]]][1])
            row["target"] = ref.notation
        return rows

    def figure3(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in [*map(zoo_name, NOISE_MODELS), *wider(NOISE_MODELS)]
                  if zoo.has(n)}
        return corruptions.noise(models, x[:s["n_noise"]], y[:s["n_noise"]], dataset="cifar10", progress=progress,
                               cache=cache)

    def beyond(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in (normal, *beyond_masked, *beyond_controls) if zoo.has(n)}
        attacks = list(dict.fromkeys(t.format(eps=e) for t in (s["apgd"], s["square"]) for e in s.get("beyond_eps", (16,))))
        rows = protocols.whitebox(models, attacks, x[:s["n_beyond"]], y[:s["n_beyond"]],
                                  dataset="cifar10", progress=progress, cache=cache)
        for row in rows:
            row["protocol"] = "beyond"
        return rows

    def controls(zoo: Zoo, x, y, progress):
        models = {zoo.label(n): zoo.model(n) for n in [normal, *control_pairs] if zoo.has(n)}
        return protocols.logit_scale(models, x[:s["n"]], y[:s["n"]], dataset="cifar10")

    table4_controls = [MATCHED["0.7-Shallow"].name, zoo_name(RESAMPLED["0.7-Shallow"])]
    table4_wider = wider(["Normal ResNet-18", "0.5-Shallow", "0.7-Shallow"])
    # 0.9-Shallow carries the claim; 0.7-Shallow has both controls (accuracy-matched Normal, resampled mask)
    beyond_masked = [zoo_name("0.9-Shallow"), zoo_name("0.7-Shallow")]
    beyond_controls = [MATCHED["0.9-Shallow"].name, MATCHED["0.7-Shallow"].name, zoo_name(RESAMPLED["0.7-Shallow"])]
    control_pairs = [n for masked, controls in ACCURACY_CONTROLS.items()
                     for n in (zoo_name(masked), *(e.name for e in controls))]
    control_pairs += [zoo_name(n) for n in RESAMPLED.values()]
    control_needs = [normal, zoo_name("0.7-Shallow"), MATCHED["0.7-Shallow"].name]  # the first pair decides it runs
    transfers = [Experiment(key, title, table, [source, normal], [n for n in TRANSFER_TARGETS if n != source],
                            cells.run, transfer=cells)
                 for key, title, source, name, table in TRANSFER_SOURCES
                 for cells in [transfer_from(source, name)]]
    return [
        *transfers,
        Experiment("table1_madry", "Table 1 · Madry et al.'s black-box setting", 1,
                   [zoo_name("Normal ResNet-18@s1m0"), normal, zoo_name("0.85-Shallow")],
                   [zoo_name("0.85-ShallowEN")], table1.run, transfer=table1),
        Experiment("table3_shuffle", "Table 3 · patch shuffle (CIFAR-10 here, ImageNet in the paper)", 3,
                   [normal, zoo_name("0.7-Shallow")], [], table3),
        Experiment("table4_whitebox", "Table 4 · white-box attacks", 4,
                   [normal, zoo_name("0.7-Shallow")], [zoo_name("0.5-Shallow"), *table4_controls, *table4_wider],
                   table4),
        Experiment("table5_graybox", "Table 5 · gray-box transfer (FGSM16)", 5,
                   [normal, zoo_name("0.7-Shallow"), zoo_name("Normal ResNet-18@s1m0")],
                   [zoo_name("0.5-Shallow"), zoo_name("0.7-Shallow@s1m0"), zoo_name("0.7-Shallow@s0m1"),
                    densenet, zoo_name("VGG-19")], table5),
        Experiment("table6_mnist", "Table 6 · MNIST black-box (DenseNet-121 source)", 6,
                   [mnist_densenet, zoo_name("Normal ResNet-18", "mnist")],
                   [zoo_name(n, "mnist") for n in ("0.5-Shallow", "0.7-Shallow", "0.9-Shallow")], table6.run,
                   transfer=table6),
        Experiment("figure3_noise", "Figure 3 · Gaussian noise", None, [normal],
                   [zoo_name(n) for n in NOISE_MODELS] + wider(NOISE_MODELS), figure3),
        Experiment("beyond_apgd_square", "Beyond the paper · APGD-CE and Square Attack (white-box / query)", None,
                   [normal, zoo_name("0.9-Shallow")], [zoo_name("0.7-Shallow"), *beyond_controls], beyond),
        Experiment("controls_logit_scale", "Clean accuracy and logit scale of the masked nets and their controls",
                   None, control_needs, [n for n in control_pairs if n not in control_needs], controls, own_section=False),
    ]



def load_result(out: Path, key: str) -> pd.DataFrame | None:
    """results/<key>.csv under `out`, or None when that experiment has not run."""
    path = out / "results" / f"{key}.csv"
    return pd.read_csv(path) if path.exists() else None


RUNS_FILE = "runs.json"  # results/runs.json: how each results/<key>.csv was made (attack path, preset, time)


def record_run(out: Path, key: str, info: dict) -> None:
    """Note in results/runs.json how experiment `key`'s CSV was just made; other keys' records stay."""
    runs = recorded_runs(out) | {key: info}
    path = out / "results" / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    safe_files.replace_text(path, json.dumps(dict(sorted(runs.items())), indent=1) + "\n")


def recorded_runs(out: Path) -> dict[str, dict]:
    """results/runs.json as a dict (empty when no run recorded itself yet)."""
    path = out / "results" / RUNS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
