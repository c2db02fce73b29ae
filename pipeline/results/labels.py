"""Names for groups of rows, derived from their identity columns (pipeline/results/identity.py), for tables and legends.

``labels(rows)`` gives every row a label that is the same for two rows exactly when their identity columns
are (apart from ``separate`` ones, which the caller shows another way: a table column, a line style).
The label reads ``model/pos/attention/cache [variant]``; where rows sharing that text differ in another
identity column, the difference is appended (``@L=256`` for the training length, ``cache_chunk_size=64``,
``model_d_model=32``); runs of different configurations (``arm_hash``) that still share a label are told
apart by size (``133k params``) or by ``cfg <hash>``. Nothing here parses a string, except
``legacy_identity``, the compatibility reader for rows written before the identity columns existed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from pipeline.results.identity import STYLED, identity_keys, key_value, present

NAMED = ("model", "pos", "attention", "cache", "variant")  # already spelled out in the base text


def base_label(row: dict[str, Any]) -> str:
    """``model/pos/attention/cache``, an attention equal to the family (mamba) not repeated, then ``[variant]``."""
    model, attention = row.get("model"), row.get("attention")
    parts = [model, row.get("pos"), None if str(attention) == str(model) else attention, row.get("cache")]
    text = "/".join(str(p) for p in parts if present(p)) or "?"
    return f"{text} [{row['variant']}]" if present(row.get("variant")) else text


def _difference(column: str, value: Any) -> str:
    if column == "train_len":
        return f"@L={key_value(value) or '?'}"
    return f"{column}={key_value(value) or '-'}"


def labels(rows: list[dict[str, Any]], separate: Iterable[str] = STYLED) -> list[str]:
    """One label per row; equal labels <=> equal identity columns (``separate`` ones and seeds aside)."""
    rows = [dict(r, **legacy_identity(r)) for r in rows]
    columns = {c for r in rows for c in r}
    keys = [c for c in identity_keys(columns) if c not in set(separate) | set(NAMED)]
    keys.sort(key=lambda c: (c != "train_len", c))
    base = [base_label(r) for r in rows]
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for text, r in zip(base, rows):
        for c in keys:
            seen[text][c].add(key_value(r.get(c)))
    varying = {text: [c for c in keys if len(values[c]) > 1] for text, values in seen.items()}
    out = [" ".join([text, *(_difference(c, r.get(c)) for c in varying[text])]) for text, r in zip(base, rows)]
    return _split_configs(out, rows)


def _split_configs(names: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Labels still shared by runs of different configurations (``arm_hash``; seeds share it) get the size
    (``(133k params)``) where that tells them apart, else ``[cfg <hash>]``: averaging unrelated runs under
    one label would report a number no run produced."""
    arms: dict[str, set[str]] = defaultdict(set)
    sizes: dict[tuple[str, str], str] = {}
    for name, r in zip(names, rows):
        if present(r.get("arm_hash")):
            arms[name].add(str(r["arm_hash"]))
            if present(r.get("n_params")):
                sizes.setdefault((name, str(r["arm_hash"])), key_value(r["n_params"]))
    mixed = {name for name, a in arms.items() if len(a) > 1}
    by_size = {name for name in mixed
               if len({sizes.get((name, a)) for a in arms[name]}) == len(arms[name]) and None not in
               {sizes.get((name, a)) for a in arms[name]}}

    def suffix(name: str, r: dict[str, Any]) -> str:
        arm = r.get("arm_hash")
        if name not in mixed or not present(arm):
            return name
        if name in by_size:
            return f"{name} ({float(sizes[(name, str(arm))]) / 1e3:.0f}k params)"
        return f"{name} [cfg {str(arm)[:6]}]"

    return [suffix(name, r) for name, r in zip(names, rows)]


def short_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Legend text for the series drawn together: ``rows`` (with a ``label`` column, the table-wide identity)
    -> {label: what tells this series apart from the others drawn beside it}. ``model/pos/attention/cache``
    keeps only the parts that differ among them (``rope`` vs ``yarnx4``; ``full`` vs ``quest(B=64,...)``);
    where that text is shared, the fewest other identity columns that tell the series apart are added
    (``train_task=mqar``, ``@L=256``), and configurations still alike get ``[cfg <hash>]``. One series
    alone is named by its ``model/pos/attention/cache`` text."""
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(str(r["label"]), dict(r, **legacy_identity(r)))
    if len(first) < 2:
        return {lb: base_label(r) for lb, r in first.items()}
    varying = [c for c in NAMED if len({key_value(r.get(c)) for r in first.values()}) > 1]

    def text(r: dict[str, Any]) -> str:
        parts = [str(r[c]) for c in varying if c != "variant" and present(r.get(c))
                 and not (c == "attention" and str(r[c]) == str(r.get("model")))]
        variant = f"[{r['variant']}]" if "variant" in varying and present(r.get("variant")) else ""
        return " ".join(p for p in ("/".join(parts), variant) if p)

    groups: dict[str, list[str]] = defaultdict(list)
    for lb, r in first.items():
        groups[text(r)].append(lb)
    out = {}
    for base, members in groups.items():
        for lb, extra in _fewest_differences([first[m] for m in members]).items():
            out[members[lb]] = " ".join(p for p in (base, extra) if p) or base_label(first[members[lb]])
    return out


def _fewest_differences(reps: list[dict[str, Any]]) -> dict[int, str]:
    """index -> the differences (``train_task=mqar @L=256``) that tell ``reps`` apart, with as few identity
    columns as a greedy choice finds (the one separating most first; training task and length preferred)."""
    columns = {c for r in reps for c in r}
    candidates = [c for c in identity_keys(columns) if c not in set(STYLED) | set(NAMED)
                  and len({key_value(r.get(c)) for r in reps}) > 1]
    chosen: list[str] = []

    def distinct(cols: list[str]) -> int:
        return len({tuple(key_value(r.get(c)) for c in cols) for r in reps})

    preferred = {"train_task": 0, "train_len": 1}
    while candidates and distinct(chosen) < len(reps):
        best = max(candidates, key=lambda c: (distinct(chosen + [c]), -preferred.get(c, 2), [-ord(ch) for ch in c]))
        if distinct(chosen + [best]) == distinct(chosen):
            break
        chosen.append(best)
        candidates.remove(best)
    names = [" ".join(_difference(c, r.get(c)) for c in chosen) for r in reps]
    if len(set(names)) < len(names):  # the same identity, other configurations (arm_hash): name the config
        names = [f"{n} [cfg {str(r.get('arm_hash'))[:6]}]".strip() if names.count(n) > 1 and present(r.get("arm_hash"))
                 else n for n, r in zip(names, reps)]
    return dict(enumerate(names))


_FACTOR = re.compile(r"(?P<rule>.+?)x(?P<factor>\d+(?:\.\d+)?)")


def legacy_identity(row: dict[str, Any]) -> dict[str, Any]:
    """COMPATIBILITY ONLY: identity columns of a row written before they existed, read back from its labels
    (``yarnx4`` -> rule yarn, factor 4; ``quest(...)[attn layers 1/2]`` -> policy quest, that scope;
    ``shifted_sparse->full`` -> train and eval patterns). Columns the row has are never overwritten."""
    out: dict[str, Any] = {}
    pos, cache, attention = row.get("pos"), row.get("cache"), row.get("attention")
    if not present(row.get("pos_rule")) and present(pos):
        m = _FACTOR.fullmatch(str(pos))
        out.update(pos_rule=m["rule"], pos_factor=float(m["factor"])) if m else out.update(pos_rule=str(pos))
    if not present(row.get("cache_policy")) and present(cache):
        out["cache_policy"] = re.split(r"[(\[]", str(cache), maxsplit=1)[0].strip() or "?"
        scope = re.search(r"\[([^\]]+)\]\s*$", str(cache))
        if scope and not present(row.get("cache_scope")):
            out["cache_scope"] = scope[1]
    if not present(row.get("attention_train")) and present(attention) and str(attention) != str(row.get("model")):
        layers, _, pattern = str(attention).rpartition(":")
        train, _, evaluated = pattern.partition("->")
        out.update(attention_train=train, attention_eval=evaluated or train)
        if layers and not present(row.get("model_layers")):
            out["model_layers"] = layers
    return out


def difference(row: dict[str, Any], other: dict[str, Any]) -> str:
    """What sets ``row`` apart from ``other``, from their identity columns: the label columns that differ
    (``linear``), else ``column=value`` of the others (``cache_budget=64``)."""
    named = [str(row.get(c)) for c in NAMED if key_value(row.get(c)) != key_value(other.get(c))]
    if named:
        return "/".join(named)
    keys = [c for c in identity_keys(set(row) | set(other)) if c not in NAMED]
    return " ".join(_difference(c, row.get(c)) for c in keys if key_value(row.get(c)) != key_value(other.get(c)))
