"""What a run leaves behind: rows and the tables read from them (second room).

Owns the row format and its crash-safe JSONL file (``rows``), the identity columns of a row
(``identity``), plot and table labels built from those columns (``labels``), provenance columns
(``provenance``) and the summaries printed from rows (``summary``, ``sweep_summary``). It comes before
training and evaluation in the import order because both write rows through it. May import
``pipeline.config``, models/, tasks/ and registries/.
"""
