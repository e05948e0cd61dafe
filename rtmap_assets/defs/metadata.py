"""Small helpers for materialisation metadata shown in the Dagster UI."""

import polars as pl

import dagster as dg


def md_table(df: pl.DataFrame, n: int = 10) -> dg.MetadataValue:
    """Markdown preview of the first `n` rows (lists and floats shortened for the UI)."""
    if df.is_empty():
        return dg.MetadataValue.md("(no rows)")
    head = df.head(n)

    def fmt(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v).replace("|", "/")[:60]

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in head.iter_rows()]
    if df.height > n:
        lines.append(f"\n… {df.height - n} more rows")
    return dg.MetadataValue.md("\n".join(lines))
