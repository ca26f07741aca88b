"""Tests for medfm.evaluation.tables: the Markdown tables of `medfm evaluate` (metrics.md)."""

from medfm.evaluation.tables import metrics_markdown, write_metrics_markdown


def table_lines(markdown):
    return [line for line in markdown.splitlines() if line.startswith("| ")]


def test_metrics_markdown_main_table_values_and_order(metrics):
    lines = table_lines(metrics_markdown(metrics).split("## Per center")[0])
    assert lines[0] == (
        "| Head | Protocol | AUC (mean ± std) | 95% CI | Acc | Bal. acc | F1 | ECE | Seeds |"
    )
    body = lines[1:]
    assert [line.split(" | ")[:2] for line in body] == [
        ["| linear", "full"],
        ["| linear", "fewshot:1"],
        ["| linear", "fewshot:5"],
        ["| linear", "fraction:0.1"],
        ["| linear", "fraction:0.5"],
        ["| knn", "full"],
        ["| random:linear", "full"],
        ["| pixels:linear", "full"],
    ]
    assert body[0] == (
        "| linear | full | 0.873 ± 0.012 | [0.800, 0.910] | 0.800 | 0.790 | 0.780 | 0.050 | 3 |"
    )
    assert body[3] == "| linear | fraction:0.1 | 0.750 | – | – | – | – | – | – |"
    assert body[5] == "| knn | full | 0.850 | n/a | – | – | – | – | – |"
    assert body[6] == "| random:linear | full | 0.510 | – | – | – | – | – | 3 |"
    assert body[7] == "| pixels:linear | full | n/a | – | – | – | – | – | – |"


def test_metrics_markdown_per_center_section(metrics):
    markdown = metrics_markdown(metrics, title="BreastMNIST")
    assert markdown.startswith("# BreastMNIST\n")
    section = markdown.split("## Per center (test AUC)")[1]
    assert "### full" in section and "### fewshot" not in section
    assert table_lines(section) == [
        "| Head | center_a (n=40) | center_b (n=35) |",
        "| linear | 0.900 | n/a |",
        "| pixels:linear | 0.600 | 0.550 |",
    ]


def test_metrics_markdown_has_no_per_center_section_without_data():
    markdown = metrics_markdown({"linear": {"full": {"test_auc": 0.8}}})
    assert "Per center" not in markdown
    assert len(table_lines(markdown)) == 2


def test_write_metrics_markdown_is_atomic_and_matches(tmp_path, metrics):
    path = write_metrics_markdown(metrics, tmp_path / "out" / "metrics.md", title="T")
    assert path.read_text(encoding="utf-8") == metrics_markdown(metrics, title="T")
    assert [p.name for p in path.parent.iterdir()] == ["metrics.md"]
