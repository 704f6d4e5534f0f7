"""training_curves.png: loss and perplexity, train and validation, at a glance.

The plotted numbers also go into the PNG's metadata (tEXt `Description`, as
JSON), so a program can read back what the picture shows.
"""

import io
import json
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tfclm.files import OutputDir, atomic_write_bytes

FILENAME = OutputDir.CURVES


def plot_training_curves(
    path: str,
    epochs: dict,
    steps: list[int] | None = None,
    step_losses: list[float] | None = None,
    steps_per_epoch: int | None = None,
) -> dict:
    """Draw the curves into `path` (atomically); returns the plotted data, as stored in the PNG."""
    train = [float(v) for v in epochs.get("loss", [])]
    val = [float(v) for v in epochs.get("val_loss", [])]
    per_epoch = steps_per_epoch or 1
    epoch_x = [(i + 1) * per_epoch for i in range(len(train))]
    data = {
        "epoch_steps": epoch_x,
        "train_loss": train,
        "val_loss": val,
        "steps": list(steps or []),
        "step_loss": [float(v) for v in (step_losses or [])],
    }
    # A Figure of its own, drawn by the Agg canvas: pyplot's global backend (a notebook's, say) is never touched.
    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    loss_axis, ppl_axis = figure.subplots(1, 2)
    for axis, transform, label in (
        (loss_axis, lambda v: v, "loss (nats per token)"),
        (ppl_axis, lambda v: math.exp(min(v, 700)), "perplexity (log scale)"),
    ):
        if data["steps"]:
            axis.plot(
                data["steps"],
                [transform(v) for v in data["step_loss"]],
                color="tab:blue",
                alpha=0.35,
                linewidth=1,
                label="train, recent steps",
            )
        if train:
            axis.plot(epoch_x, [transform(v) for v in train], "o-", color="tab:blue", label="train, epoch mean")
        if val:
            axis.plot(epoch_x[: len(val)], [transform(v) for v in val], "s-", color="tab:orange", label="validation")
        axis.set_xlabel("optimizer step" if steps_per_epoch else "epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    ppl_axis.set_yscale("log")
    last = (
        f"validation perplexity {math.exp(min(val[-1], 700)):,.1f}"
        if val
        else (f"train perplexity {math.exp(min(train[-1], 700)):,.1f}" if train else "")
    )
    figure.suptitle(f"Training curves  {last}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Description": json.dumps(data)})
    atomic_write_bytes(path, buffer.getvalue())
    return data


def read_curve_data(path: str) -> dict:
    """The numbers a training_curves.png was drawn from."""
    with Image.open(path) as image:
        return json.loads(image.text["Description"])
