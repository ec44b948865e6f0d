"""The paper's model notation, parsed into a `ModelSpec` and printed back canonically.

Grammar (case-insensitive, `x` accepted for `×`):
    model   := arch [EN[k]]  |  term (", " term)* [EN[k] | ",EN[k]"]
    arch    := ["Normal "] ("ResNet-18" | "ResNet-50" | "DenseNet-121" | "VGG-19" | "SENet-18")
    term    := ratio "-" part [DC | SM | Dropout] ["×" n]
    part    := "Shallow" (blocks 0,1,2) | "Deep" (blocks 3,4) | "B" digits (e.g. "B12": blocks 1 and 2)
Examples: "Normal ResNet-18", "0.7-Shallow", "0.5-ShallowDC", "0.9-Shallow×2", "0.5-ShallowEN",
"0.5-Shallow×2,EN", "0.5-Shallow, 0.5-Deep", "0.9-B12" (appendix F: ratio 0.9 on the 1st and 2nd blocks),
"0.7-ShallowDropout" (our control: the same pattern resampled every training step, off at test time).

Input rules: at most MAX_NOTATION_LENGTH characters of printable ASCII (plus `×`); ASCII digits only; `Normal`
only before ResNet-18; ×n up to MAX_MULTIPLIER, EN up to MAX_ENSEMBLE members. Every pattern is anchored and
unambiguous, so parsing is linear in the input. Printing is exact: a ratio prints as the shortest decimal that
reads back as the same float, so parse(print(spec)) == spec and the masks drawn from it are the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from randmask.core.architectures import ARCHITECTURES, arch_key
from randmask.core.errors import NotationError

SHALLOW = (0, 1, 2)
DEEP = (3, 4)
N_BLOCKS = 5
DEFAULT_ENSEMBLE = 5
MASK_KINDS = ("random", "SM", "DC")  # fixed masks, drawn once
TERM_KINDS = (*MASK_KINDS, "Dropout")  # plus the resampled control
MAX_NOTATION_LENGTH = 200  # the longest real name, five B-terms with 17-digit ratios and EN, is ~150
MIN_RATIO = 1e-6  # smaller ratios drop nothing in any layer, and would print longer than the length limit
MAX_MULTIPLIER = 8  # the paper goes up to ×4
MAX_ENSEMBLE = 10  # the paper's EN has 5 members

MASKED_ARCH = "resnet18"  # masked terms and 'Normal' name ResNet-18 (the registry marks it maskable)


def _arch_name(key: str) -> str:
    return ARCHITECTURES[key].name


@dataclass(frozen=True)
class MaskTerm:
    """One `ratio-Part[DC|SM][×n]` term: a drop ratio applied to a set of blocks."""

    ratio: float
    blocks: tuple[int, ...]
    # "random" (Random Mask), "SM" (same mask for all channels), "DC" (drop channels), "Dropout" (resampled)
    kind: str = "random"
    multiplier: int = 1  # ×n: channel count of these blocks multiplied by n

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise NotationError(f"drop ratio {format_number(self.ratio)} is outside (0, 1): a ratio of 0 is "
                                f"'Normal', 1 drops all")
        if self.ratio < MIN_RATIO:
            raise NotationError(f"drop ratio {format_number(self.ratio)} is below {format_number(MIN_RATIO)}: it "
                                f"would drop nothing in any layer")
        if not self.blocks or any(b not in range(N_BLOCKS) for b in self.blocks):
            raise NotationError(f"blocks {self.blocks} must be a non-empty subset of 0..{N_BLOCKS - 1}")
        if tuple(sorted(set(self.blocks))) != self.blocks:
            raise NotationError(f"blocks {self.blocks} must be sorted and unique")
        if self.kind not in TERM_KINDS:
            raise NotationError(f"mask kind {self.kind!r} is not one of {TERM_KINDS}")
        if not 1 <= self.multiplier <= MAX_MULTIPLIER:
            raise NotationError(f"channel multiplier ×{self.multiplier} must be between 1 and {MAX_MULTIPLIER}")

    @property
    def part(self) -> str:
        if self.blocks == SHALLOW:
            return "Shallow"
        if self.blocks == DEEP:
            return "Deep"
        return "B" + "".join(str(b) for b in self.blocks)

    def __str__(self) -> str:
        kind = "" if self.kind == "random" else self.kind
        mult = "" if self.multiplier == 1 else f"×{self.multiplier}"
        return f"{format_number(self.ratio)}-{self.part}{kind}{mult}"


@dataclass(frozen=True)
class ModelSpec:
    """What a notation means: an architecture, its mask terms, and an ensemble size (1 = single model)."""

    arch: str = MASKED_ARCH
    masks: tuple[MaskTerm, ...] = field(default_factory=tuple)
    ensemble: int = 1

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise NotationError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if self.masks and not ARCHITECTURES[self.arch].maskable:
            raise NotationError(f"Random Mask is defined on ResNet-18's blocks, not on {_arch_name(self.arch)}")
        seen: set[int] = set()
        for term in self.masks:
            overlap = seen & set(term.blocks)
            if overlap:
                raise NotationError(f"block(s) {sorted(overlap)} are masked twice in one model")
            seen |= set(term.blocks)
        if not 1 <= self.ensemble <= MAX_ENSEMBLE:
            raise NotationError(f"ensemble size {self.ensemble} must be between 1 and {MAX_ENSEMBLE}")

    @property
    def is_normal(self) -> bool:
        return not self.masks

    def block_term(self, block: int) -> MaskTerm | None:
        """The mask term covering `block`, or None when the block is unmasked."""
        return next((t for t in self.masks if block in t.blocks), None)

    def member(self) -> ModelSpec:
        """The single-model spec of one ensemble member."""
        return ModelSpec(self.arch, self.masks, 1)

    def __str__(self) -> str:
        return format_model(self)


def format_model(spec: ModelSpec) -> str:
    """Canonical notation, e.g. 'Normal ResNet-18', '0.5-Shallow×2,EN', '0.5-Shallow, 0.5-Deep'."""
    if spec.is_normal:
        base = ("Normal " if ARCHITECTURES[spec.arch].maskable else "") + _arch_name(spec.arch)
    else:
        base = ", ".join(str(t) for t in spec.masks)
    if spec.ensemble == 1:
        return base
    en = "EN" if spec.ensemble == DEFAULT_ENSEMBLE else f"EN{spec.ensemble}"
    # the paper writes '0.5-ShallowEN' but '0.5-Shallow×2,EN': a comma after a multiplier keeps it readable
    sep = "," if spec.masks and spec.masks[-1].multiplier > 1 else ""
    return base + sep + en


def format_number(value: float) -> str:
    """The shortest decimal that reads back as exactly `value`, without exponent or trailing '.0'.

    `:g` keeps 6 digits, so 0.1245117 printed as 0.124512, which drops a different count of positions."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")  # our grammar has no exponents: 1e-05 -> 0.00001
    return text.removesuffix(".0")


def check_ascii(text: str, what: str, limit: int) -> str:
    """Refuse text that is too long or holds anything but printable ASCII (and ×): no full-width or
    Arabic-Indic digits, no look-alike letters, no control characters. Returns the text stripped."""
    if len(text) > limit:
        raise NotationError(f"{what} is {len(text)} characters long; the limit is {limit}")
    text = text.strip(" \t\r\n")
    bad = next((i for i, ch in enumerate(text) if not (" " <= ch <= "~" or ch == "\u00d7")), None)
    if bad is not None:
        ch = text[bad]
        raise NotationError(f"{what} {text!r} has character {ch!r} (U+{ord(ch):04X}) at position {bad}: use ASCII "
                            f"letters and digits only")
    return text


def bounded_int(digits: str, what: str, low: int, high: int) -> int:
    """An ASCII digit string as an int in [low, high], refused by length before int() reads a huge one."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(high)) or not low <= int(significant) <= high:
        shown = digits if len(digits) <= 12 else f"{digits[:6]}... ({len(digits)} digits)"
        raise NotationError(f"{what} must be between {low} and {high}, got {shown}")
    return int(significant)


# re.ASCII: \d and \s are ASCII only, and IGNORECASE maps no non-ASCII letter (the Kelvin sign, long s) onto
# ours. Each pattern is unambiguous (no two adjacent parts can take the same character), hence linear.
_FLAGS = re.IGNORECASE | re.ASCII
_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"
_KIND_SUFFIX = {"dc": "DC", "sm": "SM", "dropout": "Dropout"}
_TERM = re.compile(
    rf"(?P<ratio>{_NUMBER})\s*-\s*(?P<part>shallow|deep|b\d+)(?P<kind>{'|'.join(_KIND_SUFFIX)})?"
    r"(?:\s*[x\u00d7]\s*(?P<mult>\d+))?(?:\s*(?P<en>en)(?P<k>\d+)?)?",
    _FLAGS,
)
_ARCH = re.compile(r"(?:(?P<normal>normal)\s+)?(?P<arch>[a-z]+-?\d+)(?:\s*(?P<en>en)(?P<k>\d+)?)?", _FLAGS)
_EN = re.compile(r"en(?P<k>\d+)?", _FLAGS)


def _ensemble_size(k: str | None, text: str) -> int:
    if k is None:
        return DEFAULT_ENSEMBLE
    return bounded_int(k, f"ensemble size (EN) in {text!r}", 1, MAX_ENSEMBLE)


def parse_model(text: str | ModelSpec) -> ModelSpec:
    """Parse the paper's notation; raise NotationError saying what is wrong."""
    if isinstance(text, ModelSpec):
        return text
    if not isinstance(text, str):
        raise NotationError(f"model notation must be text, not {type(text).__name__}")
    raw = check_ascii(text, "model notation", MAX_NOTATION_LENGTH)
    if not raw:
        raise NotationError("empty model notation; try 'Normal ResNet-18' or '0.7-Shallow'")
    text = raw
    arch_match = _ARCH.fullmatch(raw)
    if arch_match:
        key = arch_key(arch_match["arch"])
        if key not in ARCHITECTURES:
            raise NotationError(f"unknown architecture {arch_match['arch']!r} in {text!r}; "
                                f"known: {', '.join(a.name for a in ARCHITECTURES.values())}")
        if arch_match["normal"] and not ARCHITECTURES[key].maskable:
            raise NotationError(f"'Normal' names the unmasked ResNet-18 only; write {_arch_name(key)!r} "
                                f"without it (in {text!r})")
        ensemble = _ensemble_size(arch_match["k"], text) if arch_match["en"] else 1
        return ModelSpec(key, (), ensemble)

    parts = [p.strip() for p in raw.split(",")]
    ensemble = 1
    if len(parts) > 1 and _EN.fullmatch(parts[-1]):
        ensemble = _ensemble_size(_EN.fullmatch(parts[-1])["k"], text)
        parts = parts[:-1]
    terms = []
    for i, part in enumerate(parts):
        m = _TERM.fullmatch(part)
        if not m:
            raise NotationError(_explain_term(part, text))
        if m["en"]:
            if i != len(parts) - 1 or ensemble != 1:
                raise NotationError(f"'EN' may only end the notation, in {text!r}")
            ensemble = _ensemble_size(m["k"], text)
        ratio = float(m["ratio"])
        name = m["part"].lower()
        if name[0] == "b" and any(int(c) >= N_BLOCKS for c in name[1:]):
            raise NotationError(f"block list {m['part']!r} in {text!r} names a block outside 0..{N_BLOCKS - 1}")
        blocks = SHALLOW if name == "shallow" else DEEP if name == "deep" else tuple(int(c) for c in name[1:])
        if len(set(blocks)) != len(blocks) or tuple(sorted(blocks)) != blocks:
            raise NotationError(f"block list {m['part']!r} must name each block once, in increasing order")
        kind = _KIND_SUFFIX[m["kind"].lower()] if m["kind"] else "random"
        mult = bounded_int(m["mult"], f"channel multiplier (×n) in {text!r}", 1, MAX_MULTIPLIER) if m["mult"] else 1
        terms.append(MaskTerm(ratio, blocks, kind, mult))
    return ModelSpec(MASKED_ARCH, tuple(terms), ensemble)


def _explain_term(part: str, text: str) -> str:
    ratio = re.match(rf"\s*(-?{_NUMBER})\s*-", part, re.ASCII)
    if ratio and not 0.0 < float(ratio[1]) < 1.0:
        return f"drop ratio {ratio[1]} in {text!r} is outside (0, 1)"
    if not ratio:
        return (f"cannot read {part!r} in {text!r}: expected 'RATIO-Shallow', 'RATIO-Deep' or an architecture "
                f"such as 'Normal ResNet-18' or 'DenseNet-121'")
    return (f"cannot read {part!r} in {text!r}: expected RATIO-(Shallow|Deep|B<blocks>) optionally followed by "
            f"DC, SM or Dropout, ×n and EN, e.g. '0.5-ShallowDC' or '0.9-Shallow×2'")


def canonical(text: str | ModelSpec) -> str:
    """Canonical notation of any accepted spelling."""
    return format_model(parse_model(text))


def slug(text: str | ModelSpec) -> str:
    """A file-name-safe form of a notation: '0.9-Shallow×2,EN' -> '0.9-Shallowx2,EN', spaces -> '_'."""
    return canonical(text).replace("×", "x").replace(", ", "+").replace(" ", "_")


# ----------------------------------------------------------------------------------- model references
# One model of a notation is fixed by two seeds (init and mask) and its width (base channel count). Its one name is
# the canonical notation plus '@' and 's<seed>m<mask_seed>' when either seed is not 0 and 'w<width>' when the width
# is not the zoo's 16: '0.85-Shallow@s1m1', '0.7-Shallow@w32', '0.7-Shallow@s1m0w32'. A file name replaces the '@'
# with '-' (slug: '0.85-Shallow-s1m1'). The parser also reads the CLI's long form '@seed=1,mask_seed=1,width=32'.
_REF_SHORT = re.compile(r"(?:s(?P<seed>[0-9]{1,10})m(?P<mask_seed>[0-9]{1,10}))?(?:w(?P<width>[0-9]{1,10}))?", re.ASCII)
MAX_SEED = 2**31 - 1
DEFAULT_WIDTH = 16  # the quick preset's and the shipped zoo's base width: a reference names any other
MAX_WIDTH = 512  # the paper's base width is 64


@dataclass(frozen=True)
class ModelRef:
    """One model: canonical notation, its seeds and its width."""

    notation: str
    seed: int = 0
    mask_seed: int = 0
    width: int = DEFAULT_WIDTH

    def __str__(self) -> str:
        return format_ref(self)

    @property
    def suffix(self) -> str:
        """What follows the '@' ('s1m0', 'w32', 's1m1w32'), or '' for seeds 0 at the default width."""
        seeds = f"s{self.seed}m{self.mask_seed}" if (self.seed, self.mask_seed) != (0, 0) else ""
        return seeds + (f"w{self.width}" if self.width != DEFAULT_WIDTH else "")

    @property
    def slug(self) -> str:
        """The file-name form: '0.9-Shallowx2', '0.85-Shallow-s1m1' or '0.7-Shallow-w32'."""
        return slug(self.notation) + (f"-{self.suffix}" if self.suffix else "")


def format_ref(ref: ModelRef) -> str:
    """'0.7-Shallow', '0.7-Shallow@s1m0' for a model with another init seed, '0.7-Shallow@w32' at width 32."""
    return canonical(ref.notation) + (f"@{ref.suffix}" if ref.suffix else "")


def _ref_number(digits: str, what: str, text: str) -> int:
    low, high = (1, MAX_WIDTH) if what == "width" else (0, MAX_SEED)
    return bounded_int(digits, f"{what} in {text[:80]!r}", low, high)


def parse_ref(text: str | ModelRef) -> ModelRef:
    """'0.7-Shallow', '0.7-Shallow@s1m0', '0.7-Shallow@w32' or '0.7-Shallow@seed=1,mask_seed=0,width=32' -> ModelRef."""
    if isinstance(text, ModelRef):
        return ModelRef(canonical(text.notation), text.seed, text.mask_seed, text.width)
    if not isinstance(text, str):
        raise NotationError(f"model reference must be text, not {type(text).__name__}")
    notation, at, tail = text.rpartition("@") if "@" in text else (text, "", "")
    if not at:
        return ModelRef(canonical(text))
    short = _REF_SHORT.fullmatch(tail.strip())
    values = {"seed": 0, "mask_seed": 0, "width": DEFAULT_WIDTH}
    if short and tail.strip():
        values.update({key: _ref_number(digits, key.replace("_", " "), text)
                       for key, digits in short.groupdict().items() if digits is not None})
        return ModelRef(canonical(notation), values["seed"], values["mask_seed"], values["width"])
    seen: set[str] = set()
    for item in tail.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in values or key in seen or not re.fullmatch(r"[0-9]{1,10}", value, re.ASCII):
            raise NotationError(f"cannot read {text[:80]!r}: after '@' expected seed=N, mask_seed=N and/or width=N "
                                "(each once), or s<seed>m<mask seed> and/or w<width> (e.g. '@s1m0', '@w32')")
        seen.add(key)
        values[key] = _ref_number(value, key.replace("_", " "), text)
    return ModelRef(canonical(notation), values["seed"], values["mask_seed"], values["width"])
