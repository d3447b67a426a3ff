r"""Image-level labels written in file names: ``1031280-2300-27920-[1 0 0 1].png`` shows classes 0 and 3.

The one parser of such tags, for ``prepare luad``, ``prepare bcss`` and ``prepare folder
--labels-from-name``. A pattern is a regular expression searched (``re.search``) in the file name
without its suffix; its one group captures the tag: one digit per class, in class order, 1 = present,
0 = absent, optionally separated by spaces or commas. Named forms (the releases' own conventions)::

    luad   LUAD-HistoSeg training patches   1031280-2300-27920-[1 0 0 1].png      TE, NEC, LYM, TAS
    bcss   BCSS-WSSS training patches       TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png
                                                                                  TUM, STR, LYM, NEC

Both are the last ``[...]`` of the name (``\[([^\[\]]*)\]$``); they differ in their class lists. Facts
from the releases' readmes and their loader, ChuHan89/WSSS-Tissue ``tool/GenDataset.py`` (it reads the
characters 0, 2, 4, 6 of a LUAD tag and 0..3 of a BCSS tag, i.e. the formats above).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clustercam_pl.data.labels import BCSS_CLASSES, LUAD_CLASSES

LAST_BRACKETS = r"\[([^\[\]]*)\]$"
"""The last ``[...]`` of a name without its suffix; the group is what is inside."""
_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class NameTags:
    """A compiled tag pattern, how it was given (``luad`` or the regex) and, for a named form, its classes."""

    pattern: re.Pattern[str]
    spec: str
    classes: tuple[str, ...] | None = None
    example: str | None = None  # a tagged file name (named forms)


NAMED_FORMS: dict[str, NameTags] = {
    "luad": NameTags(re.compile(LAST_BRACKETS), "luad", LUAD_CLASSES, "1031280-2300-27920-[1 0 0 1].png"),
    "bcss": NameTags(re.compile(LAST_BRACKETS), "bcss", BCSS_CLASSES,
                     "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png"),
}


class NameTagError(ValueError):
    """A file name without a tag, or with a tag that is not one 0/1 digit per class; names the file."""


def name_tags(spec: str) -> NameTags:
    """``luad``, ``bcss`` or a regular expression with exactly one group; a bad one is refused with the form."""
    if spec in NAMED_FORMS:
        return NAMED_FORMS[spec]
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise ValueError(f"--labels-from-name {spec!r} is not a regular expression ({e}); give one of "
                         f"{sorted(NAMED_FORMS)} or a regex with one group around the digits, e.g. "
                         f"'{LAST_BRACKETS}'") from None
    if pattern.groups != 1:
        raise ValueError(f"--labels-from-name {spec!r} has {pattern.groups} groups; it needs exactly one, around "
                         f"the digits of the tag (write other groups as (?:...)), e.g. '{LAST_BRACKETS}'")
    return NameTags(pattern, spec)


def parse_name_tag(tags: NameTags, stem: str, classes: tuple[str, ...], fix: str = "") -> list[int]:
    """The class indices that the tag in ``stem`` (a file name without its suffix) marks present.

    Raises:
        NameTagError: no tag found, a digit other than 0/1, or not one digit per class; the message
            names the file, the pattern and, with ``fix``, what to do.
    """
    found = tags.pattern.search(stem)
    if found is None:
        given = "" if tags.spec == tags.pattern.pattern else f" ({tags.spec})"
        example = f". A tagged name looks like {tags.example!r}" if tags.example else ""
        raise NameTagError(
            f"file name {stem!r} has no label tag: the pattern {tags.pattern.pattern!r}{given} does not find "
            f"one{example}" + (f"; {fix}" if fix else "")
        )
    tag = found.group(1) or ""
    digits = _SEPARATORS.sub("", tag)
    wrong = sorted(set(digits) - {"0", "1"})
    if wrong:
        raise NameTagError(
            f"file name {stem!r}: tag {tag!r} has {', '.join(map(repr, wrong))}; a tag is one digit per class, "
            f"1 = present, 0 = absent" + (f"; {fix}" if fix else "")
        )
    if len(digits) != len(classes):
        raise NameTagError(
            f"file name {stem!r}: tag {tag!r} has {len(digits)} digit(s), the dataset has {len(classes)} classes "
            f"({', '.join(classes)}): one 0/1 digit per class, in this order" + (f"; {fix}" if fix else "")
        )
    return [c for c, d in enumerate(digits) if d == "1"]
