"""The readable report of one pipeline run: Markdown, HTML and two trade-off plots.

It shows what the run decided (per target, the chosen candidate or why none passed), every
candidate's compression and retest numbers, the Pareto front of accuracy against size, latency
and power, the proposals for the next iteration, what was deployed, and earlier iterations.
`report.html` is self-contained apart from the two PNGs written beside it.

    files = write_report(Path("runs/r1/report"), verdict, results, history=earlier_verdicts)
    files["md"], files["html"], files["plots"]
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.results import Candidate, CandidateResult, RunVerdict
from sigdl.core.atomic import check_writable_dir, staged_dir, write_bytes
from sigdl.core.errors import InputError

if TYPE_CHECKING:  # matplotlib is imported only when a report is drawn
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

Objective = tuple[str, str]  # (a CandidateResult field, "max" or "min")
DEFAULT_OBJECTIVES: tuple[Objective, ...] = (
    ("accuracy", "max"),
    ("size_kb", "min"),
    ("latency_ms", "min"),
    ("power_w", "min"),
)
PLOTS = {  # file name -> (x field, x axis label, title prefix)
    "accuracy_vs_size.png": ("size_kb", "Deployable size (KiB, log scale)", "Accuracy vs size"),
    "accuracy_vs_latency.png": (
        "latency_ms",
        "Predicted latency on target (ms, log scale)",
        "Accuracy vs latency",
    ),
}
FIGSIZE_IN = (7.0, 5.0)
DPI = 120  # 840 x 600 px
MARKERS = "osD^vP*X"  # one per target, beside its colour, so the plot survives grey printing
MARKER_SIZE = 45.0  # points^2, the last target's; earlier targets are drawn larger
_Point = tuple[float, float, CandidateResult]  # (x, accuracy in %, the result)
_RESULT_FIELDS = frozenset(f.name for f in fields(CandidateResult))


def pareto_front(
    results: Sequence[CandidateResult], objectives: Sequence[Objective] = DEFAULT_OBJECTIVES
) -> list[str]:
    """Ids of the candidates that no other candidate of the same target dominates.

    `a` dominates `b` when it is at least as good on every objective and better on one, so
    equal candidates both stay. A result whose compression or retest failed (`error`), or that
    lacks an objective's value (accuracy None: no data set), is never on the front and dominates
    nothing. Ids come back in input order.
    """
    signs = _objective_signs(objectives)
    scored = [(r, s) for r in results if (s := _score(r, signs)) is not None]
    return [
        r.id
        for r, s in scored
        if not any(other.target == r.target and _dominates(t, s) for other, t in scored)
    ]


def _objective_signs(objectives: Sequence[Objective]) -> list[tuple[str, float]]:
    signs = []
    for name, direction in objectives:
        if name not in _RESULT_FIELDS:
            raise InputError(f"objective {name!r} is not a field of CandidateResult")
        if direction not in ("max", "min"):
            raise InputError(f"objective {name!r}: direction {direction!r}, expected max or min")
        signs.append((name, 1.0 if direction == "max" else -1.0))
    return signs


def _score(result: CandidateResult, signs: list[tuple[str, float]]) -> tuple[float, ...] | None:
    """The objectives as numbers where higher is better; None when the result cannot compete."""
    if result.error:
        return None
    values = [getattr(result, name) for name, _ in signs]
    if any(v is None or math.isnan(v) for v in values):
        return None
    return tuple(sign * v for (_, sign), v in zip(signs, values, strict=True))


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def write_report(
    out_dir: Path,
    verdict: RunVerdict,
    results: list[CandidateResult],
    history: list[RunVerdict] | None = None,
) -> dict[str, str | list[str]]:
    """Write report.md, report.html and the two plots into `out_dir`, all or none.

    The front shown is `verdict.front` (what the run decided on), else `pareto_front(results)`.
    `history`: earlier runs' verdicts, shown as a table. Returns {"md", "html", "plots"} paths.
    """
    out = check_writable_dir(out_dir)
    front = verdict.front or pareto_front(results)
    headline = _headline(verdict)
    sections = _sections(verdict, results, front, history or [])
    with staged_dir(out) as stage:
        for name, (x_field, x_label, title) in PLOTS.items():
            plot_title = f"{title}: run {verdict.pipeline_run_id}, iteration {verdict.iteration}"
            write_bytes(stage / name, _plot_png(results, front, x_field, x_label, plot_title))
        write_bytes(stage / "report.md", _markdown(headline, sections).encode())
        write_bytes(stage / "report.html", _html(headline, sections).encode())
    return {
        "md": str(out / "report.md"),
        "html": str(out / "report.html"),
        "plots": [str(out / name) for name in PLOTS],
    }


# --- content, shared by the Markdown and the HTML ------------------------------------------


@dataclass(frozen=True)
class _Section:
    title: str
    text: str = ""  # a paragraph before the table
    header: tuple[str, ...] = ()
    rows: list[tuple[str, ...]] = field(default_factory=list)
    images: tuple[str, ...] = ()  # file names of PNGs beside the report


def _headline(verdict: RunVerdict) -> str:
    outcome = "PASSED" if verdict.passed else "FAILED"
    return f"SigDL run {verdict.pipeline_run_id}, iteration {verdict.iteration}: {outcome}"


def _sections(
    verdict: RunVerdict, results: list[CandidateResult], front: list[str], history: list[RunVerdict]
) -> list[_Section]:
    sections = [
        _summary(verdict, front),
        _verdict_section(verdict),
        _candidates_section(results, set(front)),
        _plots_section(results),
        _proposals_section(verdict),
    ]
    if verdict.deployed:
        sections.append(_deployed_section(verdict))
    if history:
        sections.append(_history_section(history))
    return sections


def _summary(verdict: RunVerdict, front: list[str]) -> _Section:
    failed = [t for t, v in verdict.targets.items() if not v.get("passed")]
    if not verdict.targets:
        gate = "No target was retested."
    elif failed:
        gate = f"The gate failed on {len(failed)} of {len(verdict.targets)} target(s): "
        gate += ", ".join(failed) + "."
    else:
        gate = f"Every target ({len(verdict.targets)}) has a candidate that passed its gate."
    text = f"{gate} Run status: {verdict.status}. Pareto front: {', '.join(front) or 'empty'}."
    return _Section("Summary", text=text)


def _verdict_section(verdict: RunVerdict) -> _Section:
    rows = [
        (target, _gate(v.get("passed", False)), v.get("best") or "none", v.get("why", ""))
        for target, v in verdict.targets.items()
    ]
    return _Section(
        "Verdict per target",
        text="" if rows else "No target was retested.",
        header=("Target", "Gate", "Chosen", "Why"),
        rows=rows,
    )


def _candidates_section(results: list[CandidateResult], front: set[str]) -> _Section:
    header = (
        "ID",
        "Iter.",
        "Target",
        "Recipe",
        "Precision",
        "Ratio",
        "Size (KiB)",
        "Accuracy (%)",
        "Drop (pp)",
        "Latency (ms)",
        "FPS",
        "Power (W)",
        "Front",
        "Gate",
        "Failed checks",
    )
    return _Section(
        "Candidates",
        text=(
            "Drop: the dense model's accuracy minus the candidate's, in percentage points. "
            "Front: on its target's Pareto front (accuracy, size, latency, power)."
        ),
        header=header,
        rows=[_candidate_row(r, r.id in front) for r in results],
    )


def _candidate_row(r: CandidateResult, on_front: bool) -> tuple[str, ...]:
    c = r.candidate
    precision = r.precision or c.get("precision") or "native"
    recipe = c.get("recipe_name") or c.get("recipe", "")
    if r.error:
        metrics = ("n/a",) * 7
        gate, checks = "ERROR", r.error
    else:
        accuracy = None if r.accuracy is None else 100 * r.accuracy
        metrics = (
            _num(r.ratio, ".1f"),
            _num(r.size_kb, ".1f"),
            _num(accuracy, ".2f"),
            _num(r.accuracy_drop_pp, ".2f"),
            _num(r.latency_ms, ".2f"),
            _num(r.fps, ".1f"),
            _num(r.power_w, ".2f"),
        )
        gate, checks = _gate(r.passed), "; ".join(r.failures)
    identity = (r.id, str(c.get("iteration", "")), r.target, recipe, precision)
    return (*identity, *metrics, "yes" if on_front else "", gate, checks)


def _plots_section(results: list[CandidateResult]) -> _Section:
    missing = [r.id for r in results if r.error or r.accuracy is None]
    text = f"Not plotted (an error, or no accuracy): {', '.join(missing)}." if missing else ""
    return _Section("Trade-offs", text=text, images=tuple(PLOTS))


def _proposals_section(verdict: RunVerdict) -> _Section:
    proposals = [Candidate.from_json(p) for p in verdict.proposals]
    rows = [
        (p.id, p.target, p.recipe_name or p.recipe, p.recipe, p.precision or "native", p.why)
        for p in proposals
    ]
    return _Section(
        f"Proposals for iteration {verdict.iteration + 1}",
        text="" if rows else "No candidate was proposed.",
        header=("ID", "Target", "Recipe", "Recipe source", "Precision", "Why"),
        rows=rows,
    )


def _deployed_section(verdict: RunVerdict) -> _Section:
    rows = [
        (target, str(d.get("version", "")), str(d.get("pointer_uri", "")))
        for target, d in verdict.deployed.items()
    ]
    return _Section("Deployed", header=("Target", "Version", "Pointer"), rows=rows)


def _history_section(history: list[RunVerdict]) -> _Section:
    rows = [
        (
            str(h.iteration),
            h.pipeline_run_id,
            _gate(h.passed),
            h.status,
            ", ".join(f"{t}: {v.get('best') or 'none'}" for t, v in h.targets.items()),
            ", ".join(h.front),
        )
        for h in sorted(history, key=lambda h: h.iteration)
    ]
    header = ("Iteration", "Pipeline run", "Gate", "Run status", "Chosen", "Pareto front")
    return _Section("Earlier iterations", header=header, rows=rows)


def _gate(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


# --- renderers ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    # many Markdown viewers pass inline HTML through: break every "<" that could open a tag,
    # comment or autolink, and keep "<=" and ">=" of requirements readable
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(headline: str, sections: list[_Section]) -> str:
    lines = [f"# {_md_cell(headline)}", ""]
    for s in sections:
        lines += [f"## {_md_cell(s.title)}", ""]
        if s.text:
            lines += [_md_cell(s.text), ""]
        if s.rows:
            lines.append("| " + " | ".join(_md_cell(h) for h in s.header) + " |")
            lines.append("|" + "---|" * len(s.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
            lines.append("")
        lines += [f"![{name}]({name})" for name in s.images]
        if s.images:
            lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; }
th { background: #eee; }
img { max-width: 100%; margin-right: 1em; }
"""


def _html(headline: str, sections: list[_Section]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{e(headline)}</title><style>{_CSS}</style></head>',
        "<body>",
        f"<h1>{e(headline)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{e(s.text)}</p>")
        if s.rows:
            parts.append("<table>")
            parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in s.header) + "</tr>")
            for row in s.rows:
                parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        parts += [f'<img src="{e(name)}" alt="{e(name)}">' for name in s.images]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _plot_png(
    results: list[CandidateResult], front: list[str], x_field: str, x_label: str, title: str
) -> bytes:
    """Accuracy (%) against `x_field` on a log axis, one colour and marker per target."""
    # imported here so that importing the report module stays cheap; a Figure on an Agg canvas,
    # not pyplot, so no global backend is switched and no figure outlives the call
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    xs = []
    labels: dict[tuple[float, float], list[str]] = {}  # one label per spot: points can coincide
    targets = list(dict.fromkeys(r.target for r in results))
    for i, target in enumerate(targets):
        points = [
            (getattr(r, x_field), 100 * r.accuracy, r)
            for r in results
            if r.target == target
            and not r.error
            and r.accuracy is not None
            and getattr(r, x_field) > 0  # a log axis has no room for 0 (not measured)
        ]
        # earlier targets drawn larger, so a later target's point on the same spot stays visible
        size = MARKER_SIZE * (1 + 0.9 * (len(targets) - 1 - i))
        _plot_target(ax, points, set(front), colors(i % 10), MARKERS[i % len(MARKERS)], size)
        xs += [x for x, _, _ in points]
        for x, y, r in points:
            labels.setdefault((round(math.log10(x), 2), round(y, 2)), []).append(r.id)
    for (log_x, y), ids in labels.items():
        ax.annotate(", ".join(sorted(set(ids))), (10**log_x, y), xytext=(9, 6),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    if xs:
        _log_x_axis(ax, min(xs), max(xs))
        ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
        ax.legend(handles=_legend_handles(ax), loc="lower right", fontsize=8, framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no candidate to plot", transform=ax.transAxes, ha="center")
        ax.set_xticks([])  # 0..1 would read as measured values
        ax.set_yticks([])
    ax.set_xlabel(x_label)
    ax.set_ylabel("Accuracy on target (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _plot_target(
    ax: Axes, points: list[_Point], on_front: set[str], color: tuple, marker: str, size: float
) -> None:
    """One target's candidates: filled if the gate passed, hollow if not; the front circled
    and joined by a step line."""
    if not points:
        return
    for x, y, r in points:
        face = color if r.passed else "white"
        ax.scatter(
            x,
            y,
            marker=marker,
            s=size,
            facecolors=[face],
            edgecolors=[color],
            linewidths=1.5,
            zorder=4,
        )
    best = sorted((x, y) for x, y, r in points if r.id in on_front)
    if best:
        xs, ys = zip(*best, strict=True)
        ax.step(xs, ys, where="post", color=color, linewidth=1, alpha=0.6, zorder=2)
        ax.scatter(xs, ys, s=260, facecolors="none", edgecolors=[color], alpha=0.7, zorder=3)
    ax.plot([], [], color=color, marker=marker, linestyle="", label=points[0][2].target)


def _log_x_axis(ax: Axes, low: float, high: float) -> None:
    """A log axis labelled with plain numbers (60, 200), not 6x10^1; the ticks between the
    powers of ten are labelled too when the data spans two decades or less."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
    ax.xaxis.set_minor_formatter(plain if high / low <= 100 else NullFormatter())


def _legend_handles(ax: Axes) -> list[Artist]:
    """The targets, then what filled, hollow and circled markers mean."""
    from matplotlib.lines import Line2D

    grey = "0.4"
    return [
        *ax.get_legend_handles_labels()[0],
        Line2D([], [], color=grey, marker="o", linestyle="", label="gate passed"),
        Line2D([], [], color=grey, marker="o", mfc="white", linestyle="", label="gate failed"),
        Line2D([], [], color=grey, marker="o", mfc="none", ms=14, lw=1, label="Pareto front"),
    ]
