"""One wording for a strict weight load that does not match (every missing, unexpected and mis-shaped tensor),
and one for weights that are not finite."""

from __future__ import annotations


def mismatch_report(source: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> str | None:
    """``None`` when the tensors match; else one message naming (up to 8 of) each kind of mismatch."""
    if not (missing or unexpected or shapes):
        return None

    def few(names: list[str]) -> str:
        return f"{names[:8]}{' ...' if len(names) > 8 else ''}"

    parts = []
    if missing:
        parts.append(f"missing from {source}: {few(missing)}")
    if unexpected:
        parts.append(f"not in the model: {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {shapes[:8]}")
    return f"{source} does not match the model config: " + "; ".join(parts)


NONFINITE_OPT_IN = "allow_nonfinite=true (train.py / eval.py: +allow_nonfinite=true; export_hf.py: --allow-nonfinite)"


def nonfinite_report(source: str, names: list[str]) -> str | None:
    """``None`` when every tensor is finite; else one message naming (up to 8 of) those holding NaN or inf."""
    if not names:
        return None
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    return (f"{source}: {len(names)} tensor(s) hold NaN or inf values: {names[:8]}{more}; a model with them computes "
            f"garbage (rows would look like real, bad accuracy). Refused; to load them on purpose: {NONFINITE_OPT_IN}")
