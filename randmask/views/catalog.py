"""The models the app offers: zoo checkpoints, the user's finished runs, and untrained stand-ins for planned
models not trained yet; how pickers name them, which they preselect, and what each model predicts.

    discover_models()   the catalog (zoo/<dataset>/<name>/, runs/<name>/, stand-ins)
    load_entry(entry)   one of them as a model in eval mode (JSON + safetensors, never unpickled)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from randmask.core.datasets import CLASSES, dataset_name
from randmask.core.errors import CheckpointError, RandmaskError
from randmask.core.models import build_model
from randmask.core.notation import ModelRef, canonical, format_ref, parse_model
from randmask.core.settings import user_runs_root, zoo_root
from randmask.experiments.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, read_config
from randmask.experiments.evaluate import csv_text, predict
from randmask.results.zoo import ENSEMBLES, ZOO
from randmask.views.tables import MISSING, number_text


@dataclass(frozen=True)
class ModelEntry:
    """A model the app can offer: a zoo or user checkpoint, or an untrained stand-in built from notation."""

    key: str  # unique: "zoo:cifar10/0.7-Shallow", "user:0.7-Shallow-2", "untrained:cifar10/0.7-Shallow"
    notation: str
    dataset: str
    source: str  # "zoo" | "user" | "untrained"
    folder: str | None = None
    width: int = 16
    seed: int = 0
    mask_seed: int = 0
    clean_accuracy: float | None = None
    role: str = ""

    @property
    def trained(self) -> bool:
        return self.source != "untrained"

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.notation, self.seed, self.mask_seed, self.width)

    @property
    def name(self) -> str:
        """The model's reference ('0.7-Shallow', '0.7-Shallow@s1m0', '0.7-Shallow@w32'): what tables and legends
        call it."""
        return format_ref(self.ref)

    @property
    def badge(self) -> str:
        return {"zoo": "zoo", "user": "yours", "untrained": "UNTRAINED"}[self.source]

    @property
    def label(self) -> str:
        """One line for pickers: name, data set, accuracy or the untrained badge."""
        acc = f" · {100 * self.clean_accuracy:.1f}%" if self.clean_accuracy is not None else ""
        where = "" if self.dataset == "cifar10" else f" [{self.dataset}]"
        tag = "" if self.source == "zoo" else f" ({self.badge})"
        if self.source == "user":
            tag = f" (yours: {Path(self.folder or '').name})"
        return f"{self.name}{where}{acc}{tag}"

    @property
    def is_masked(self) -> bool:
        return not parse_model(self.notation).is_normal


@dataclass
class Catalog:
    entries: list[ModelEntry]
    problems: list[str] = field(default_factory=list)  # folders that could not be read, one line each

    def get(self, key: str) -> ModelEntry:
        for entry in self.entries:
            if entry.key == key:
                return entry
        raise RandmaskError(f"no model {key!r} (it may have been removed); pick another")

    def for_dataset(self, dataset: str) -> list[ModelEntry]:
        return [e for e in self.entries if e.dataset == dataset]

    def trained_refs(self, dataset: str) -> list[ModelRef]:
        """The references of the trained models of a data set (stand-ins excluded)."""
        return [e.ref for e in self.for_dataset(dataset) if e.trained]

    @property
    def datasets(self) -> list[str]:
        return sorted({e.dataset for e in self.entries}, key=lambda d: (d != "cifar10", d))


def _entry_from_folder(folder: Path, key: str, source: str) -> ModelEntry:
    config = read_config(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}")
    canonical(config["notation"])  # a notation this code cannot read is a problem, not a crash later
    acc = config.get("clean_accuracy")
    return ModelEntry(key=key, notation=canonical(config["notation"]), dataset=config["dataset"], source=source,
                      folder=str(folder), width=int(config["width"]), seed=int(config["seed"]),
                      mask_seed=int(config["mask_seed"]), clean_accuracy=float(acc) if acc is not None else None,
                      role=str(config.get("role", "") or ""))


def discover_models(zoo: Path | None = None, runs: Path | None = None, include_untrained: bool = True) -> Catalog:
    """Zoo checkpoints (zoo/<dataset>/<name>/), finished user runs (runs/<name>/) and, for every planned zoo
    entry that is not trained yet, an untrained stand-in built from its notation (width 16)."""
    zoo, runs = zoo or zoo_root(), runs or user_runs_root()
    entries, problems = [], []
    if zoo.is_dir():
        for config in sorted(zoo.glob(f"*/*/{CONFIG_FILE}")):
            folder = config.parent
            if folder.name.endswith(".tmp"):
                continue  # an export in progress
            name = f"{folder.parent.name}/{folder.name}"
            try:
                entries.append(_entry_from_folder(folder, f"zoo:{name}", "zoo"))
            except (RandmaskError, OSError, ValueError, KeyError) as exc:
                problems.append(f"zoo model {name}: {exc}")
    roles = {e.name: e.role for e in ZOO}
    entries = [e if e.role else _with_role(e, roles) for e in entries]
    if runs.is_dir():
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            if not (folder / WEIGHTS_FILE).exists():
                continue  # still training, cancelled or failed: the Train page shows those
            try:
                entries.append(_entry_from_folder(folder, f"user:{folder.name}", "user"))
            except (RandmaskError, OSError, ValueError, KeyError) as exc:
                problems.append(f"your model {folder.name}: {exc}")
    if include_untrained:
        have = {e.key.removeprefix("zoo:") for e in entries if e.source == "zoo"}
        planned = [(e.name, e.notation, e.dataset, e.seed, e.mask_seed, e.role) for e in ZOO]
        planned += [(name, notation, "cifar10", 0, 0, "ensemble") for name, (notation, _) in ENSEMBLES.items()]
        for name, notation, dataset, seed, mask_seed, role in planned:
            if name not in have:
                entries.append(ModelEntry(key=f"untrained:{name}", notation=canonical(notation), dataset=dataset,
                                          source="untrained", seed=seed, mask_seed=mask_seed, role=role))
    return Catalog(entries, problems)


def _with_role(entry: ModelEntry, roles: Mapping[str, str]) -> ModelEntry:
    return replace(entry, role=roles.get(entry.key.removeprefix("zoo:"), ""))


def unique_names(entries: Sequence[ModelEntry]) -> list[str]:
    """Display names for legends and tables, made distinct: a clash gets its badge or folder appended."""
    names = [e.name for e in entries]
    for i, entry in enumerate(entries):
        if names.count(entry.name) > 1:
            names[i] = f"{entry.name} ({Path(entry.folder).name if entry.source == 'user' else entry.badge})"
    for i in range(len(names)):  # still equal (two user runs of one notation): number them
        if names.count(names[i]) > 1:
            same = [j for j, n in enumerate(names) if n == names[i]]
            for k, j in enumerate(same):
                names[j] = f"{names[j]} #{k + 1}"
    return names


def shuffle_grids(size: int, largest: int = 16) -> list[int]:
    """Grid sizes k (2..largest) that cut a size×size image into equal k×k patches: 2, 4, 8, 16 for 32."""
    return [k for k in range(2, largest + 1) if size % k == 0]


def load_entry(entry: ModelEntry, device: str | torch.device | None = None) -> nn.Module:
    """The entry's model in eval mode (checkpoints are rebuilt from JSON + safetensors, never unpickled)."""
    if entry.folder:
        model, _ = load_model(entry.folder, device)
        return model
    model = build_model(entry.notation, dataset=entry.dataset, width=entry.width, mask_seed=entry.mask_seed,
                        seed=entry.seed).eval()
    return model.to(device) if device is not None else model


def default_picks(entries: Sequence[ModelEntry], limit: int = 3) -> list[str]:
    """Keys preselected in the picker: Normal ResNet-18 and the study's masked models, trained copies first."""
    wanted = ["Normal ResNet-18", "0.9-Shallow", "0.7-Shallow", "0.5-Shallow"]
    picks: list[str] = []
    for notation in wanted:
        same = [e for e in entries if e.notation == notation and e.seed == 0 and e.mask_seed == 0]
        same.sort(key=lambda e: ("zoo", "user", "untrained").index(e.source))
        if same:
            picks.append(same[0].key)
    if not picks:
        picks = [e.key for e in entries[:limit]]
    return picks[:limit]


def resolve_picks(entries: Sequence[ModelEntry], stored: Sequence[str] | None) -> list[str]:
    """The picked keys among `entries`: the stored picks that still name one of them (a removed run, another
    data set drop out), or default_picks when nothing was ever picked."""
    if stored is None:
        return default_picks(entries)
    known = {e.key for e in entries}
    return [k for k in stored if k in known]


def keyed(entries: Sequence[ModelEntry]) -> dict[str, ModelEntry]:
    """{key: entry}, in the entries' order (what a picker offers and looks its choice up in)."""
    return {e.key: e for e in entries}


def picker_labels(entries: Sequence[ModelEntry]) -> dict[str, str]:
    """{key: label} of the entries, in order: what the sidebar's picker offers and shows."""
    return {e.key: e.label for e in entries}


def untrained_names(entries: Sequence[ModelEntry]) -> list[str]:
    """Names of the untrained stand-ins among the entries (a page warns that they only show how it works)."""
    return [e.name for e in entries if not e.trained]


def select(entries: Sequence[ModelEntry], keys: Sequence[str]) -> list[ModelEntry]:
    """The entries with these keys, in the keys' order; keys of no entry are skipped."""
    by_key = keyed(entries)
    return [by_key[k] for k in keys if k in by_key]


def split_masked(entries: Sequence[ModelEntry]) -> tuple[list[ModelEntry], list[ModelEntry]]:
    """(unmasked entries, masked entries), each in the entries' order."""
    return [e for e in entries if not e.is_masked], [e for e in entries if e.is_masked]


def masked_choice(entries: Sequence[ModelEntry], picked: Sequence[ModelEntry]) -> tuple[list[ModelEntry], str | None]:
    """(the masked entries, the key to preselect: the first masked model picked in the sidebar, or None)."""
    masked = [e for e in picked if e.is_masked]
    return split_masked(entries)[1], masked[0].key if masked else None


def gallery_pair(entries: Sequence[ModelEntry], picked: Sequence[str]) -> tuple[str | None, str | None]:
    """The (normal, masked) keys the gallery preselects: a Normal ResNet-18 and a 0.9-Shallow, the first such
    among the sidebar's picks, then the default picks (trained copies first), then the catalog; None where the
    catalog has none."""
    normals, maskeds = split_masked(entries)
    order = [*picked, *default_picks(entries, limit=4)]

    def first(candidates: Sequence[ModelEntry], notation: str) -> str | None:
        for key in order:
            entry = next((e for e in candidates if e.key == key), None)
            if entry and entry.notation == notation:
                return entry.key
        return next((e.key for e in candidates if e.notation == notation), None)

    return first(normals, "Normal ResNet-18"), first(maskeds, "0.9-Shallow")


def default_transfer(entries: Sequence[ModelEntry], picked: Sequence[str] = ()) -> tuple[str | None, list[str]]:
    """(source key, target keys) a new transfer evaluation starts from: the paper's main black-box source
    (DenseNet-121, else another trained unmasked net) against Normal ResNet-18 and 0.7-Shallow, never the source
    against itself (which only says that the images fool the source). Trained models first, then the picks."""
    def first(notation: str) -> ModelEntry | None:
        same = [e for e in entries if e.notation == notation and e.trained and e.seed == 0 and e.mask_seed == 0
                and not e.role.startswith("control")]  # not an accuracy-matched control of the same notation
        same.sort(key=lambda e: ("zoo", "user").index(e.source))
        return same[0] if same else None

    unmasked = [e for e in entries if not e.is_masked]
    source = (first("DenseNet-121") or first("VGG-19") or first("Normal ResNet-18")
              or next((e for e in unmasked if e.trained), None) or (unmasked or list(entries) or [None])[0])
    if source is None:
        return None, []
    targets = [e.key for e in (first("Normal ResNet-18"), first("0.7-Shallow")) if e is not None]
    targets += [k for k in picked if k not in targets]
    return source.key, [k for k in targets if k != source.key][:3]


def trained_summary(catalog: Catalog, dataset: str) -> str:
    """The picker's count, saying which data set it counts and how that relates to every trained model (the
    README's zoo table counts all data sets)."""
    here = catalog.for_dataset(dataset)
    n_here = sum(e.trained for e in here)
    trained = [e for e in catalog.entries if e.trained]
    text = f"{n_here} trained {dataset_name(dataset)} model{'s' if n_here != 1 else ''} to pick from"
    if len(trained) != n_here:
        where = " and ".join(dataset_name(d) for d in catalog.datasets if any(e.dataset == d for e in trained))
        zoo, yours = sum(e.source == "zoo" for e in trained), sum(e.source == "user" for e in trained)
        text += f"; {len(trained)} over {where}" + (f" ({zoo} in the zoo, {yours} yours)" if yours else
                                                   " (the zoo, as in the README)")
    stand_ins = len(here) - n_here
    if stand_ins:
        text += f". Plus {stand_ins} UNTRAINED stand-in{'s' if stand_ins != 1 else ''} for planned models not trained yet"
    return text + "."


def zoo_overview(zoo_rows: Sequence[Mapping], entries: Sequence[ModelEntry]) -> list[dict]:
    """The Home page's zoo table: every planned zoo model (zoo.list_zoo) and the user's own, named by notation
    and seeds, with status, clean accuracy as text (MISSING when not trained) and what the paper uses it for."""
    planned = {e.name: e for e in ZOO}  # an accuracy-matched control: 'Normal ResNet-18 (4 epochs)'
    rows = []
    for row in zoo_rows:
        if row["trained"]:
            status = "trained" if row["current"] else f"trained (older recipe: {row['epochs']} epochs)"
        else:
            status = "not trained yet"
        entry = planned.get(row["name"])  # None: an ensemble (seeds 0)
        if entry is not None and entry.matched_to:
            name = entry.label  # an accuracy-matched control: 'Normal ResNet-18 (4 epochs)'
        else:
            name = format_ref(entry.ref if entry else ModelRef(row["notation"]))
        accuracy = None if row["clean_accuracy"] is None else 100 * row["clean_accuracy"]
        rows.append({"data set": dataset_name(row["dataset"]), "model": name, "status": status,
                     "accuracy (%)": number_text(accuracy), "used for": row["role"] or MISSING})
    for entry in entries:
        if entry.source == "user":
            accuracy = None if entry.clean_accuracy is None else 100 * entry.clean_accuracy
            rows.append({"data set": dataset_name(entry.dataset), "model": entry.name,
                         "status": f"yours: {Path(entry.folder or '').name}", "accuracy (%)": number_text(accuracy),
                         "used for": MISSING})
    return rows


def zoo_trained_count(rows: Sequence[Mapping]) -> int:
    """How many rows of zoo_overview are trained models (the zoo's, older recipes included, and the user's)."""
    return sum(r["status"] != "not trained yet" for r in rows)


def transfer_entries(source: ModelEntry, targets: Sequence[str], entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The models a transfer run loads: the source first, then the targets (by key, in order), the source only
    once where it is a target too."""
    return [source, *select(entries, [k for k in targets if k != source.key])]


def predictions(models: Mapping[str, nn.Module], x: torch.Tensor, dataset: str = "cifar10") -> list[dict]:
    """For each model and image (floats in [0,1]): predicted class, its name and softmax confidence."""
    rows = []
    for name, model in models.items():
        prob = predict(model, x).softmax(1).cpu()
        conf, pred = prob.max(1)
        for i in range(len(x)):
            rows.append({"model": name, "image": i, "pred": int(pred[i]), "label": CLASSES[dataset][int(pred[i])],
                         "confidence": float(conf[i])})
    return rows


def rows_csv(rows: Sequence[Mapping]) -> bytes:
    """Protocol rows as CSV bytes (the results files' format) for a download button."""
    return csv_text(rows).encode()
