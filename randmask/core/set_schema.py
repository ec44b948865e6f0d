"""The adversarial-set folder format: what its writer (randmask.experiments.adversarial_sets, `python -m randmask
attack`) and its reader (study.sets, `python -m study create`) must agree on.

Standard library only: the study imports this module, and must not pull in torch.

Layout:
    DIR/meta.csv                      one row per image, the columns below
    DIR/images/<index:06d>.png        the image shown to people (lossless PNG)
    DIR/images/clean/<index:06d>.png  the unperturbed original, when the writer saves it

Columns the reader needs (REQUIRED_COLUMNS):
    index          position of the image in the test set
    true_label     class index
    source         the attacked model (notation, or checkpoint folder when notations repeat); may be empty
    attack         canonical attack notation, or `clean` (CLEAN) for unperturbed images
    source_pred    the source's prediction on the saved image; may be empty
    linf, l2       norms of saved minus original image (attack sets: 0-255 units)
    file           PNG path relative to the folder, images/<index:06d>.png
Columns the reader accepts and ignores (OPTIONAL_COLUMNS):
    source_confidence  the source's softmax probability of source_pred
    fooled             source_pred != true_label
    attack_success     the attack's own criterion on the saved image (CW: margin >= kappa)
    seed               attack seed
    clean_file         images/clean/<index:06d>.png when the originals are saved too
and `pred:<model>` (PRED_PREFIX): another model's prediction on the saved image.
"""
from __future__ import annotations

META_FILE = "meta.csv"
IMAGES_DIR = "images"
CLEAN_IMAGES_DIR = f"{IMAGES_DIR}/clean"
CLEAN = "clean"  # the attack of unperturbed images
PRED_PREFIX = "pred:"

REQUIRED_COLUMNS = ("index", "true_label", "source", "attack", "source_pred", "linf", "l2", "file")
OPTIONAL_COLUMNS = ("source_confidence", "fooled", "attack_success", "seed", "clean_file")
# the attack writer's leading columns, in its order (then clean_file and pred:<model> when present)
META_COLUMNS = ("index", "file", "true_label", "source", "attack", "source_pred", "source_confidence", "fooled",
                "attack_success", "linf", "l2", "seed")


def image_file(index: int) -> str:
    """`file` of the image at test-set position `index`: images/000042.png."""
    return f"{IMAGES_DIR}/{index:06d}.png"


def clean_image_file(index: int) -> str:
    """`clean_file` of the original at test-set position `index`: images/clean/000042.png."""
    return f"{CLEAN_IMAGES_DIR}/{index:06d}.png"


def pred_column(model: str) -> str:
    """The column holding `model`'s predictions: pred:<model>."""
    return PRED_PREFIX + model


def is_known_column(name: str) -> bool:
    """Whether the reader knows what `name` means (required, optional or a pred:<model> column)."""
    return name in REQUIRED_COLUMNS or name in OPTIONAL_COLUMNS or (name.startswith(PRED_PREFIX)
                                                                  and len(name) > len(PRED_PREFIX))
