"""`priorkit speed`: one run measures every form side by side; ratios are to the dense row; the report renders it."""

from priorkit.report.sparse_speed import measure_sparse_speed, sparse_speed_markdown, write_sparse_speed


def test_rows_ratios_and_report(tmp_path):
    rows = measure_sparse_speed(d=16, hidden=32, batch=4, sparsities=(0.9,), ranks=(4,), ffn_sparsities=(0.5,),
                                reps=2, warmup=0)  # fmt: skip
    by = {r["row"]: r for r in rows}
    assert list(by)[0] == "dense"
    for label in ("masked 0.9", "masked 0.9, baked", "csr 0.9", "channels 0.5, removed", "low-rank 4"):
        r = by[label]
        assert r["time_vs_dense"] == r["ms"] / by["dense"]["ms"]
        assert r["bytes_vs_dense"] == r["bytes"] / by["dense"]["bytes"]
    assert by["csr 0.9"]["bytes"] < by["dense"]["bytes"] < by["masked 0.9"]["bytes"]  # bool masks cost memory
    assert by["channels 0.5, removed"]["shape"] == [[16, 16], [16, 16], [16, 16]]
    assert by["masked 0.9, baked"]["params_nonzero"] <= 0.1 * by["dense"]["params_nonzero"] + 3
    assert "error" in by["2:4 semi-structured"]  # no CPU kernel in this build: said, not timed
    assert abs(by["act-sparse FFN 0.5 (batch 1)"]["activation_sparsity"] - 0.5) < 0.05
    paths = write_sparse_speed(tmp_path, rows, settings={"d": 16, "hidden": 32, "batch": 4, "reps": 2, "threads": 1})
    md = sparse_speed_markdown({"settings": {}, "rows": rows})
    assert "| csr 0.9 |" in md and paths["md"].read_text().startswith("## What sparsity saves")
