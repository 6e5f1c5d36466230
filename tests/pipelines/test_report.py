"""The run report: the Pareto front per target, and the Markdown, HTML and plots written."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipelines.report import DPI, FIGSIZE_IN, PLOTS, pareto_front, write_report
from pipelines.results import Candidate, CandidateResult, RunVerdict
from sigdl.core.errors import InputError

A53, M7 = "arm-cortex-a53", "arm-cortex-m7"
PIXELS = (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))


def result(
    cid: str,
    target: str = A53,
    accuracy: float | None = 0.97,
    size_kb: float = 100.0,
    latency_ms: float = 10.0,
    power_w: float = 1.0,
    recipe_name: str = "deep-compression",
    passed: bool = True,
    iteration: int = 1,
    **kw,
) -> CandidateResult:
    candidate = Candidate(
        id=cid, iteration=iteration, target=target, recipe=recipe_name, recipe_name=recipe_name
    )
    return CandidateResult(
        candidate=candidate.to_json(),
        accuracy=accuracy,
        size_kb=size_kb,
        latency_ms=latency_ms,
        power_w=power_w,
        fps=1000 / latency_ms if latency_ms else 0.0,
        passed=passed,
        **kw,
    )


def test_a_dominated_candidate_is_off_the_front():
    better = result("a", accuracy=0.97, size_kb=100, latency_ms=10)
    worse = result("b", accuracy=0.96, size_kb=120, latency_ms=10)
    assert pareto_front([worse, better]) == ["a"]


def test_trade_offs_stay_on_the_front_in_input_order():
    accurate = result("big", accuracy=0.99, size_kb=400)
    small = result("small", accuracy=0.95, size_kb=50)
    fast = result("fast", accuracy=0.95, size_kb=400, latency_ms=2)
    assert pareto_front([small, fast, accurate]) == ["small", "fast", "big"]


def test_candidates_compete_only_within_their_target():
    a53 = result("a", target=A53, accuracy=0.99, size_kb=50)
    m7 = result("m", target=M7, accuracy=0.90, size_kb=200)  # dominated, were it on the A53
    m7_worse = result("m2", target=M7, accuracy=0.89, size_kb=210)
    assert pareto_front([a53, m7, m7_worse]) == ["a", "m"]


def test_failed_or_unmeasured_results_are_never_on_the_front_and_dominate_nothing():
    errored = result("err", accuracy=1.0, size_kb=1, latency_ms=1, power_w=0.1, error="boom")
    no_data = result("nodata", accuracy=None, size_kb=1)
    ordinary = result("ok")
    assert pareto_front([errored, no_data, ordinary]) == ["ok"]
    assert pareto_front([errored, no_data]) == []


def test_equal_candidates_are_both_on_the_front():
    assert pareto_front([result("x"), result("y"), result("z", accuracy=0.5)]) == ["x", "y"]


def test_objectives_are_chosen_and_checked():
    heavy = result("heavy", accuracy=0.97, power_w=5.0)
    light = result("light", accuracy=0.97, power_w=1.0)
    assert pareto_front([heavy, light]) == ["light"]
    assert pareto_front([heavy, light], objectives=[("accuracy", "max")]) == ["heavy", "light"]
    with pytest.raises(InputError, match=r"'accuracy'.*'best'"):
        pareto_front([heavy], objectives=[("accuracy", "best")])
    with pytest.raises(InputError, match="'speed'"):
        pareto_front([heavy], objectives=[("speed", "max")])


def run_example() -> tuple[RunVerdict, list[CandidateResult], list[RunVerdict]]:
    """Iteration 2 of a run on two targets: a front, a dominated, a failed and an errored one."""

    def i2(cid: str, target: str, accuracy: float, size_kb: float, latency_ms: float, **kw):
        return result(cid, target, accuracy, size_kb, latency_ms, iteration=2, **kw)

    results = [
        i2("i2-c0", A53, 0.985, 420, 12.0, power_w=1.8, ratio=9.8, accuracy_drop_pp=0.1),
        i2("i2-c1", A53, 0.981, 140, 6.5, power_w=1.4, ratio=29.3, accuracy_drop_pp=0.5),
        i2("i2-c2", A53, 0.978, 180, 7.0, power_w=1.5, ratio=22.8, accuracy_drop_pp=0.8),
        i2(
            "i2-c3",
            A53,
            0.952,
            60,
            5.9,
            power_w=1.3,
            ratio=68.4,
            accuracy_drop_pp=3.4,
            passed=False,
            failures=["accuracy_drop<=1: 3.40 pp"],
        ),
        i2(
            "i2-c4",
            M7,
            0.975,
            210,
            48.0,
            power_w=0.35,
            ratio=19.5,
            accuracy_drop_pp=0.9,
            recipe_name="<script>alert(1)</script>",
            passed=False,
            failures=["fps>=30: 20.8"],
        ),
        i2("i2-c5", M7, 0.969, 95, 31.0, power_w=0.30, ratio=43.1, accuracy_drop_pp=1.5),
        i2("i2-c6", M7, None, 0, 0, error="retest: target timed out"),
    ]
    proposal = Candidate(
        id="i3-c0",
        iteration=3,
        target=M7,
        recipe="s3://runs/r2/recipes/i3-c0.yaml",
        recipe_name="prune-90-int8",
        why="i2-c4 failed fps>=30; prune further",
    )
    verdict = RunVerdict(
        pipeline_run_id="run-7f3a",
        iteration=2,
        passed=False,
        targets={
            A53: {"passed": True, "best": "i2-c1", "why": "smallest that passed"},
            M7: {"passed": False, "best": "", "why": "no candidate met fps>=30"},
        },
        proposals=[proposal.to_json()],
        deployed={A53: {"version": "v4", "pointer_uri": "s3://fleets/local/a53/current"}},
        status="succeeded",
    )
    earlier = RunVerdict(pipeline_run_id="run-11aa", iteration=1, passed=False, front=["i1-c0"])
    return verdict, results, [earlier]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    verdict, results, history = run_example()
    return out, write_report(out, verdict, results, history=history)


def test_write_report_writes_the_four_files_and_nothing_else(report):
    out, files = report
    assert files["md"] == str(out / "report.md") and files["html"] == str(out / "report.html")
    assert files["plots"] == [str(out / name) for name in PLOTS]
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.md", "report.html", *PLOTS])


def test_plots_are_pngs_of_the_declared_size(report):
    _, files = report
    for path in files["plots"]:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == PIXELS
            lightest, darkest = image.convert("L").getextrema()[::-1]
            assert lightest == 255 and darkest < 64  # drawn on, not blank


def test_markdown_shows_the_verdict_every_candidate_and_what_comes_next(report):
    _, files = report
    md = Path(files["md"]).read_text()
    assert md.startswith("# SigDL run run-7f3a, iteration 2: FAILED")
    assert "Pareto front: i2-c0, i2-c1, i2-c3, i2-c4, i2-c5." in md  # i2-c2 is dominated
    for cid in (f"i2-c{n}" for n in range(7)):
        assert f"| {cid} |" in md
    assert "no candidate met fps>=30" in md and "| ERROR | retest: target timed out |" in md
    assert "## Proposals for iteration 3" in md and "i2-c4 failed fps>=30; prune further" in md
    assert "| arm-cortex-a53 | v4 | s3://fleets/local/a53/current |" in md
    assert "## Earlier iterations" in md and "run-11aa" in md
    assert "![accuracy_vs_size.png](accuracy_vs_size.png)" in md
    assert "<script>" not in md and "&lt;script>alert(1)&lt;/script>" in md


def test_html_is_escaped_and_points_at_the_plots_beside_it(report):
    _, files = report
    page = Path(files["html"]).read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for name in PLOTS:
        assert f'<img src="{name}"' in page
    assert "<h1>SigDL run run-7f3a, iteration 2: FAILED</h1>" in page


def test_a_report_without_plottable_candidates_is_still_written(tmp_path):
    verdict = RunVerdict(pipeline_run_id="run-0", iteration=1, passed=False)
    files = write_report(tmp_path, verdict, [result("c0", error="compression failed")])
    assert "No candidate was proposed." in Path(files["md"]).read_text()
    for path in files["plots"]:
        with Image.open(path) as image:
            assert image.size == PIXELS


def test_the_report_shows_the_front_the_verdict_decided_on(tmp_path):
    verdict = RunVerdict(pipeline_run_id="run-1", iteration=1, passed=True, front=["b"])
    files = write_report(tmp_path, verdict, [result("a", accuracy=0.99), result("b")])
    md = Path(files["md"]).read_text()
    assert "Pareto front: b." in md and "| b | 1 | arm-cortex-a53 |" in md


def test_importing_the_report_does_not_import_matplotlib():
    code = "import sys, pipelines.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
