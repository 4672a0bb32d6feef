"""`ppl judges` on the command line: outputs per the contract, and one-line errors with exit code 2."""

from __future__ import annotations

import pandas as pd
import pytest

from ppl.cli import main
from ppl.judges.simplex import simulate

FAST = ["--num-samples", "100", "--num-warmup", "100", "--chains", "2"]


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("prior", ["hierarchical", "flat"])
def test_aggregate_cli_writes_labels_workers_and_plot(tmp_path, prior):
    rows = ["task\tworker\tlabel"] + [f"t{t}\tw{w}\t{(t % 2) if w < 3 or t % 5 else 1 - t % 2}"
                                      for t in range(20) for w in range(4)]
    src = write(tmp_path / "in.tsv", "\n".join(rows) + "\n")
    out = tmp_path / "out.tsv"
    png = tmp_path / "conf.png"
    assert main(["judges", "aggregate", src, "--out", str(out), "--plot", str(png), "--prior", prior, *FAST]) == 0
    labels = pd.read_csv(out, sep="\t")
    assert list(labels.columns) == ["task", "label", "prob"] and len(labels) == 20
    assert (labels["label"] == [t % 2 for t in range(20)]).all()
    workers = pd.read_csv(tmp_path / "out_workers.tsv", sep="\t")
    assert list(workers.columns) == ["worker", "accuracy_mean", "ci_low", "ci_high", "n_labels", "r_hat", "ess"]
    assert png.stat().st_size > 1000


def test_rank_cli_writes_contract_columns_and_plots(tmp_path):
    df, _, _ = simulate(0, n_candidates=3, n_judges=3, n_items=10, n_levels=3)
    src = tmp_path / "scores.tsv"
    df.to_csv(src, sep="\t", index=False)
    out = tmp_path / "rank.tsv"
    png = tmp_path / "forest.png"
    assert main(["judges", "rank", str(src), "--out", str(out), "--plot", str(png), *FAST]) == 0
    frame = pd.read_csv(out, sep="\t")
    assert list(frame.columns) == ["candidate", "quality_mean", "ci_low", "ci_high", "rank", "p_rank1", "r_hat",
                                   "ess"]
    assert frame.r_hat.lt(1.1).all() and frame.ess.gt(20).all()
    assert sorted(frame["rank"]) == [1, 2, 3]
    assert png.exists() and (tmp_path / "forest_judges.png").exists()


@pytest.mark.parametrize("args, text, message", [
    (["aggregate"], "task\tlabel\n1\t1\n", "missing column(s) worker"),
    (["aggregate"], "task\tworker\tlabel\n1\tw\t1\n", "single label value"),
    (["aggregate"], "task\tworker\tlabel\n1\tw1\t1\n2\tw2\t\n1\tw3\t0\n", "worker 'w2' has no labels"),
    (["aggregate"], "", "file is empty"),
    (["rank"], "item\tcandidate\tjudge\tscore\n1\ta\tj\t3\n1\tb\tj\tgood\n", "column 'score' must be numeric"),
    (["rank"], "item\tcandidate\tjudge\tscore\n1\ta\tj\t3\n2\ta\tj\t4\n", "single candidate"),
    (["rank"], "item\tcandidate\tjudge\tscore\n1\ta\tj\t3\n1\tb\tk\t\n", "judge 'k' has no labels"),
    (["rank"], "item\tcandidate\tscore\n1\ta\t3\n", "missing column(s) judge"),
    (["rank", "--model", "simplex"], "item\tleft\tright\tjudge\twinner\n1\ta\tb\tj\ta\n", "needs scores"),
    (["rank", "--model", "bradley-terry"], "item\tleft\tright\tjudge\twinner\n1\ta\tb\tj\tc\n",
     "neither the left nor the right"),
    (["rank"], "item\tcandidate\tjudge\tscore\n1\ta\tj\t3\n1\tb\tj\t-inf\n", "non-finite value (-inf, row 2)"),
    (["aggregate"], "task\tworker\tlabel\n1\tw1\t1\n\n2\tw2\n", "line 4 has 2 fields, expected 3"),
    (["aggregate"], "task,worker,label\n1,w1,1\n2,w2,0,0\n", "line 3 has 4 fields, expected 3"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, text, message):
    src = write(tmp_path / "bad.tsv", text)
    code = main(["judges", args[0], src, "--out", str(tmp_path / "o.tsv"), *args[1:], *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ppl judges: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_file(tmp_path, capsys):
    assert main(["judges", "rank", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "o.tsv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_csv_and_tsv_read_alike_and_crowdkit_pairs_are_ours(tmp_path):
    from ppl.judges import is_pairwise, read_table
    from ppl.judges.data import encode_pairs

    rows = [("task", "worker", "label"), ("t1", "w1", "1"), ("t2", "w1", "0"), ("t1", "w2", "1")]
    tsv = read_table(write(tmp_path / "a.tsv", "".join("\t".join(r) + "\n" for r in rows)), ("task", "worker", "label"))
    csv = read_table(write(tmp_path / "a.csv", "".join(",".join(r) + "\n" for r in rows)), ("task", "worker", "label"))
    pd.testing.assert_frame_equal(tsv, csv)
    assert list(csv.columns) == ["task", "worker", "label"] and list(csv["label"]) == [1, 0, 1]

    crowdkit = pd.DataFrame({"worker": ["j1", "j2", "j1"], "left": ["a", "a", "b"], "right": ["b", "c", "c"],
                             "label": ["a", "c", "b"]})
    ours = pd.DataFrame({"item": 0, "left": crowdkit.left, "right": crowdkit.right, "judge": crowdkit.worker,
                         "winner": crowdkit.label})
    assert is_pairwise(crowdkit)
    got, want = encode_pairs(crowdkit), encode_pairs(ours)
    assert (got.outcome == want.outcome).all() and list(got.candidates) == ["a", "b", "c"]
