"""What the classification codes mean, in one place for the viewer, the overlay and the dashboard.

The codes are those of `recurrence_classification` (docs/ARCHITECTURE.md, docs/RULES.md rules 9–12):
seed volume class 1 inside / 2 peripheral / 0 outside, seed centroid class 1 inside / 0 outside,
Dawson in-field / marginal / outside, Mohamed A–E (per patient).
"""

from __future__ import annotations

import html

VOLUME_CLASS = {1: "inside", 2: "peripheral", 0: "outside"}
CENTROID_CLASS = {1: "inside", 0: "outside"}
SCHEME_TITLES = {
    "seed_volume": "Seed volume class (sphere)",
    "seed_centroid": "Seed centroid class",
    "dawson": "Dawson (rGTV fraction)",
    "mohamed": "Mohamed type (per patient)",
}
CODES: dict[str, list[tuple[str, str]]] = {
    "Seed volume class (sphere around the centroid, radius of the policy in use)": [
        ("1 inside", "≥ 95 % of the sphere's voxels receive ≥ 95 % of the level's prescription"),
        ("2 peripheral", "some, but < 95 %, of the sphere's voxels do"),
        ("0 outside", "none of the sphere's voxels does"),
    ],
    "Seed centroid class": [
        ("1 inside", "dose at the recurrence centroid ≥ 95 % of the prescription"),
        ("0 outside", "dose at the centroid below 95 % of the prescription"),
    ],
    "Dawson (fraction of the mapped recurrence volume ≥ 95 % of the prescription)": [
        ("in-field", "≥ 95 % of the recurrence volume"),
        ("marginal", "20–95 %"),
        ("outside", "< 20 %"),
    ],
    "Mohamed type (per patient, against the high-risk and elective levels)": [
        ("A", "centroid inside the high-risk CTV"),
        ("B", "centroid outside it but dose ≥ 95 % of the high prescription"),
        ("C", "centroid inside an elective (lower-dose) CTV"),
        ("D", "centroid dose ≥ 95 % of an elective prescription"),
        ("E", "none of these: outside every high-dose region"),
    ],
    "Levels": [
        ("low / intermediate / high", "the arm's prescription levels; a level the arm does not prescribe "
                                     "(prescription 0) has no class (NULL), never 0"),
    ],
}


def explain_volume(code: int | None) -> str:
    return "—" if code is None else f"{code} {VOLUME_CLASS.get(int(code), '?')}"


def explain_centroid(code: int | None) -> str:
    return "—" if code is None else f"{code} {CENTROID_CLASS.get(int(code), '?')}"


def codes_legend_html() -> str:
    parts = []
    for scheme, items in CODES.items():
        parts.append(f"<dt>{html.escape(scheme)}</dt>")
        parts += [f"<dd><b>{html.escape(code)}</b>: {html.escape(text)}</dd>" for code, text in items]
    return "<dl class='codes'>" + "".join(parts) + "</dl>"


def codes_legend_text(width: int = 0) -> list[str]:
    """One line per scheme, for a figure footer (the PNG overlay)."""
    short = {
        "Seed volume class": "volume class: 1 inside (≥95 % of sphere ≥95 % P) / 2 peripheral / 0 outside",
        "Seed centroid class": "centroid class: 1 inside (centroid dose ≥95 % P) / 0 outside",
        "Dawson": "Dawson: in-field (≥95 % of rGTV ≥95 % P) / marginal (20–95 %) / outside (<20 %)",
        "Mohamed": "Mohamed: A in high CTV · B ≥95 % P_high · C in elective CTV · D ≥95 % P_elective · E none",
    }
    return list(short.values())
