"""``cyclegan report RUN``: one self-contained HTML page about a run, readable offline.

``report.html`` in the run folder (written at the end of training too) holds: the loss curves and
learning rates drawn with matplotlib from ``metrics.jsonl``, the sample grids over time, the
latest checkpoint, the evaluation numbers when ``evaluation.json`` is there (``cyclegan evaluate
... --json RUN/evaluation.json``), and the config. Images are embedded as data URLs, so the one
file can be mailed or archived.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cyclegan.checkpoint import best_checkpoint_path, newest_checkpoint
from cyclegan.errors import CycleGANError
from cyclegan.logger import read_metrics
from cyclegan.options import LOWER_IS_BETTER
from cyclegan.registry import model_of_saved
from cyclegan.runtime import add_debug_flag, run_command
from cyclegan.utils import atomic_write

__all__ = ["write_report", "main"]

log = logging.getLogger("cyclegan.report")

# The panels every model's chart has; then one panel per loss term of its model (Model.loss_names).
COMMON_PANELS = (
    ("discriminators", ("D_A", "D_B", "D")),
    ("generators: adversarial and total", ("adv", "G")),
)


def loss_panels(config: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The chart's panels for a run of the config's model."""
    own = tuple((name, (name,)) for name in model_of_saved(config).loss_names if name != "adv")
    return COMMON_PANELS + own


def _png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


Panels = tuple[tuple[str, tuple[str, ...]], ...]


def loss_chart(records: list[dict[str, Any]], panels: Panels = COMMON_PANELS) -> bytes:
    """The loss curves (a panel per entry of ``panels``) and learning rates as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    panels = tuple((title, keys) for title, keys in panels if any(k in r for r in records for k in keys))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4 * (len(panels) + 1), 3.2), dpi=100,
                             squeeze=False)
    axes = axes[0]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            values = [_number(r.get(key)) for r in records]  # a damaged value is a gap
            if any(math.isfinite(v) for v in values):
                ax.plot(steps, values, label=key, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for key in ("lr_G", "lr_D"):
        values = [_number(r.get(key)) for r in records]
        if any(math.isfinite(v) for v in values):
            ax.plot(steps, values, label=key, linewidth=1)
    ax.set_title("learning rate", fontsize=10)
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _png(fig: Any) -> bytes:
    """A matplotlib figure of one row of panels as PNG bytes (the figure closed). The margins are
    fixed in inches, room for tick labels like 0.00020, a title and the x label: tight_layout
    would draw the figure twice to find them, which took about as long as the drawing itself."""
    import matplotlib.pyplot as plt

    width, height = fig.get_size_inches()
    panels = len(fig.axes)
    left, right, gap = 0.8, 0.15, 0.95  # inches
    panel = (width - left - right - gap * (panels - 1)) / panels
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=0.55 / height, top=1 - 0.35 / height,
                        wspace=gap / panel)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def score_chart(records: list[dict[str, Any]]) -> bytes:
    """The scores of ``--eval_every`` against the step, a panel per score, the best point of each
    marked (lowest for distances and errors, highest for PSNR and SSIM)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k.startswith("eval_")})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], _number(r[key])) for r in records if key in r and math.isfinite(_number(r[key]))]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, linewidth=1, label=key)
            metric = key.removeprefix("eval_")
            best = (min if metric in LOWER_IS_BETTER else max)(points, key=lambda p: p[1])
            ax.plot([best[0]], [best[1]], marker="*", markersize=14, color="tab:red", linestyle="none",
                    label=f"best {best[1]:.4g} at step {best[0]}")
            ax.legend(fontsize=8)
        ax.set_title(key.removeprefix("eval_"), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _png(fig)


def pick_samples(samples: list[Path], at_most: int = 8) -> list[Path]:
    """At most ``at_most`` grids spread evenly over the run, the first and the last included."""
    if len(samples) <= at_most:
        return samples
    picks = {round(i * (len(samples) - 1) / (at_most - 1)) for i in range(at_most)}
    return [samples[i] for i in sorted(picks)]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; None when it is damaged (cut short, not JSON, not UTF-8)."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return None


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise CycleGANError(f"{run_dir}: not a run folder (no config.json); give the --output folder of a training run")
    config = _read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise CycleGANError(f"{run_dir / 'config.json'}: damaged (not a JSON mapping of options); restore it from the "
                            "run's checkpoint metadata or start the run again")
    everything = read_metrics(run_dir)
    records = [r for r in everything if not any(k.startswith("eval_") for k in r)]  # the training steps'
    scored = [r for r in everything if any(k.startswith("eval_") for k in r)]
    samples = sorted((run_dir / "samples").glob("*.png"))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>CycleGAN run {html.escape(run_dir.name)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "figure{display:inline-block;margin:0 1em 1em 0}figure img{image-rendering:pixelated;min-width:160px}"
        "#loss-chart{max-width:100%;height:auto}"
        "figcaption{font-size:90%;color:#555}",
        "</style></head><body>",
        f"<h1>CycleGAN run <code>{html.escape(str(run_dir))}</code></h1>",
    ]
    if records:
        last = records[-1]
        parts.append(f"<p>{len(records)} logged steps; last: step {last['step']} (epoch {last.get('epoch', '?')})"
                     f", {_number(last.get('img_s')):.3g} img/s.</p>")
        parts.append("<h2>Losses</h2>")
        chart = loss_chart(records, loss_panels(config))
        parts.append(f"<img id='loss-chart' alt='loss curves' src='{_png_data_url(chart)}'>")
    else:
        parts.append("<p id='no-metrics'>No metrics.jsonl yet: the run has logged no step.</p>")
    if scored:
        parts.append("<h2>Scores while training</h2>")
        best = best_checkpoint_path(run_dir)
        if best.is_file():
            parts.append(f"<p id='best'>best generators (--keep_best {html.escape(str(config.get('keep_best')))}): "
                         f"<code>{html.escape(str(best))}</code></p>")
        parts.append(f"<img id='score-chart' alt='scores while training' src='{_png_data_url(score_chart(scored))}'>")
    parts.append("<h2>Samples</h2><p>Rows: real A, G_AB(A), real B, then G_BA(B) (CycleGAN) or G_AB(B) (CUT, "
                 "FastCUT); test images.</p><div id='samples'>")
    for path in pick_samples(samples):
        caption = f"batch {int(path.stem)}" if path.stem.isdigit() else path.stem
        parts.append(f"<figure class='sample'><img alt='{html.escape(caption)}' "
                     f"src='{_png_data_url(path.read_bytes())}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    if not samples:
        parts.append("<p>No sample grid yet.</p>")
    parts.append("</div>")
    try:
        latest = newest_checkpoint(run_dir)
        parts.append(f"<h2>Latest checkpoint</h2><p id='checkpoint'><code>{html.escape(str(latest))}</code></p>")
    except CycleGANError:
        parts.append("<h2>Latest checkpoint</h2><p id='checkpoint'>none yet</p>")
    evaluation = run_dir / "evaluation.json"
    if evaluation.is_file():
        numbers = _read_json(evaluation)
        if not isinstance(numbers, dict):
            numbers = {"evaluation.json": "damaged: run cyclegan evaluate again"}
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in numbers.items())
        parts.append(f"<h2>Evaluation</h2><table id='evaluation'>{rows}</table>")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in sorted(config.items()))
    parts.append(f"<h2>Config</h2><table id='config'>{rows}</table></body></html>\n")
    target = Path(output) if output else run_dir / "report.html"
    with atomic_write(target, "w") as f:
        f.write("\n".join(parts))
    return target


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyclegan report", description=(
        "Write report.html for a run folder: loss curves, sample grids, latest checkpoint, evaluation, config."))
    p.add_argument("run", help="the run folder (the --output of cyclegan train)")
    p.add_argument("--output", help="where to write the page (default: RUN/report.html)")
    add_debug_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    log.info("wrote %s", write_report(args.run, args.output))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
