"""The one rule every verdict follows (RULE, applied by `judge`): a claim names its comparisons, two rates with
Wilson 95% intervals and the direction it expects; point estimates alone never decide. Also how results name a
model at a width, and how a claim's verdict and evidence are written (`claim_verdict`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIN_N = 30  # below this a rate is not evidence: one image moves it by more than 3 points, its interval spans ~30
BASE_WIDTH = 16  # the zoo's width; a model of another width is named '<model>@w<width>' in results (issue 34)
WORDS = ("supported", "partly supported", "not supported", "contradicted", "untested")

RULE = (
    "**How a verdict is reached.** Each claim lists its comparisons: two rates, each with its Wilson 95% interval, "
    "and the direction the claim expects. A comparison *separates* when one interval lies wholly above the other "
    "(intervals that touch or overlap do not separate). A comparison with fewer than {min_n} images on either side "
    "is not evidence: it is shown as *not counted* and left out. Over the counted comparisons the verdict is "
    "**supported** when every one separates in the claimed direction, **partly supported** when some do and none "
    "separates the other way, **not supported** when none separates, **contradicted** when at least one separates "
    "the other way (whatever the others show), and **untested** when none can be counted. For a claim that two "
    "rates are alike, overlapping intervals count as the claimed direction and separating ones as the other way "
    "(overlap finds no difference; it does not prove there is none).\n\n"
    "**Denominators.** Transfer rates are defense rates: among the images that fooled the source, the share the "
    "target still classifies correctly. Under white-box and query attacks (Table 4, APGD-CE, Square) every verdict "
    "uses robust accuracy over all attacked images (the RobustBench convention), so a less accurate net is not "
    "flattered; those tables show beside it the rate over the images the model classifies correctly without "
    "attack (images correct under attack ÷ images correct clean)."
)


@dataclass(frozen=True)
class Comparison:
    """Rate `a` against rate `b` (result rows with n, accuracy, ci_low, ci_high) and what the claim expects of a:
    'higher', 'lower' than b, or 'alike'."""
    label: str
    a: dict
    b: dict
    claimed: str = "higher"
    note: str = ""  # shown after the outcome, e.g. the same rates over another denominator


def outcome(c: Comparison, min_n: int = MIN_N) -> str:
    """'as claimed' (the intervals separate in the claimed direction, or overlap for 'alike'), 'reversed',
    'no separation' or 'not counted' (n below min_n)."""
    if min(rate_n(c.a), rate_n(c.b)) < min_n:
        return "not counted"
    side = compare(c.a, c.b)
    if c.claimed == "alike":
        return "as claimed" if side == "no clear difference" else "reversed"
    if side == c.claimed:
        return "as claimed"
    return "no separation" if side == "no clear difference" else "reversed"


def judge(comparisons: list[Comparison], min_n: int = MIN_N) -> str:
    """The verdict word RULE gives a claim tested by `comparisons`."""
    counted = [o for o in (outcome(c, min_n) for c in comparisons) if o != "not counted"]
    if not counted:
        return "untested"
    if "reversed" in counted:
        return "contradicted"
    if all(o == "as claimed" for o in counted):
        return "supported"
    return "partly supported" if "as claimed" in counted else "not supported"


def rate_n(row: dict) -> int:
    n = row.get("n")
    return 0 if n is None or n != n else int(n)


def named(model: str, width: int = BASE_WIDTH) -> str:
    """A model's name in results at a width: the zoo's own width unsuffixed, others as '<model>@w<width>'."""
    return model if width == BASE_WIDTH else f"{model}@w{width}"


def at_width(target: str, width: int = BASE_WIDTH) -> str | None:
    """The model a results target names if it is of `width` ('0.7-Shallow@w32' at 32 -> '0.7-Shallow'), else None."""
    found = re.fullmatch(r"(.*)@w(\d+)", target)
    if found:
        return found[1] if int(found[2]) == width else None
    return target if width == BASE_WIDTH else None


def result_widths(out: Path) -> list[int]:
    """The widths with results: the zoo's, and every '@w<width>' a results/*.csv target names."""
    found = {BASE_WIDTH}
    for path in sorted((out / "results").glob("*.csv")):
        found |= {int(w) for w in re.findall(r"@w(\d+)", path.read_text())}
    return sorted(found)


def find_rate(frame, target: str, attack: str | None = None, metric: str = "defense_rate") -> dict | None:
    if frame is None:
        return None
    part = frame[(frame["target"] == target) & (frame["metric"] == metric)]
    if attack is not None:
        part = part[part["attack"] == attack]
    return part.iloc[0].to_dict() if len(part) else None


def compare(a: dict | None, b: dict | None) -> str:
    """'higher', 'lower' or 'no clear difference' for proportion a vs b (Wilson intervals not overlapping)."""
    if a is None or b is None or not a.get("n") or not b.get("n"):
        return "untested"
    if a["ci_low"] > b["ci_high"]:
        return "higher"
    if a["ci_high"] < b["ci_low"]:
        return "lower"
    return "no clear difference"


def rate_text(row: dict | None) -> str:
    if row is None or not rate_n(row):
        return "–" if row is None else "– (n=0)"
    return f"{100 * row['accuracy']:.1f}% (n={rate_n(row)})"


def _evidence(comparisons: list[Comparison], min_n: int = MIN_N) -> str:
    """Each comparison with both rates and how RULE reads it."""
    def mark(c: Comparison) -> str:
        found = outcome(c, min_n)
        return f"not counted: n < {min_n}" if found == "not counted" else found

    return "; ".join(f"{c.label}: {rate_text(c.a)} vs {rate_text(c.b)} ({mark(c)}){c.note}" for c in comparisons)


def claim_verdict(claim: str, comparisons: list[Comparison], prefix: str = "", needs: str = "needs models",
           suffix: str = "") -> tuple[str, str, str]:
    if not comparisons:
        return claim, "untested", needs
    return claim, judge(comparisons), prefix + _evidence(comparisons) + suffix
