"""A one-page PDF report for a kept study, drawn with matplotlib's PDF backend.

The page holds what a reader files with the case: the image as the model saw it
with the heatmap, the result, probability and operating point, the model's name
and version, the dates, the "second opinion, not a diagnosis" statement, the
reader's notes (typed in the report form, if any) and room to write. Nothing
comes from the file's name or DICOM header: a study keeps neither.
"""

from __future__ import annotations

import datetime as dt
import io
import textwrap
import threading

import numpy as np
from matplotlib.figure import Figure

from .explain import overlay
from .screening import DISCLAIMER

STATEMENT = DISCLAIMER
A4 = (8.27, 11.69)


def study_report_pdf(study, gray: np.ndarray, heatmap: np.ndarray | None, *,
                     notes: str = "", generated: dt.datetime | None = None) -> bytes:
    """The report of ``study`` (``studies.Study``) as PDF bytes.

    ``gray``: the image as the model saw it, uint8 (h, w); ``heatmap``: the evidence
    map in [0, 1] (any size) or None when it cannot be recomputed; ``notes``: the
    reader's text."""
    generated = generated or dt.datetime.now(dt.timezone.utc)
    fig = _PlainFigure(figsize=A4)
    fig.text(0.07, 0.955, "pneumo · chest X-ray screening report", fontsize=16,
             weight="bold")
    fig.text(0.07, 0.935, f"Study {study.id}", fontsize=9, family="monospace")

    ax = fig.add_axes([0.07, 0.52, 0.45, 0.39])
    picture = overlay(gray, heatmap) if heatmap is not None else gray
    ax.imshow(picture, cmap=None if heatmap is not None else "gray", vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title("image with heatmap (evidence for the result)" if heatmap is not None
                 else "image (no heatmap: recorded by another model version)", fontsize=8,
                 parse_math=False)

    result = study.label + ("  (inconclusive)" if study.inconclusive else "")
    rows = [
        ("Result", result),
        ("Probability of pneumonia", f"{study.probability * 100:.1f}%"),
        ("Operating threshold", f"{study.threshold * 100:.1f}%"),
        ("Input check", study.input_status),
        ("Model", f"{study.model_name} {study.model_version}"),
        ("Study date (UTC)", study.created.replace("T", " ")[:19]),
        ("Report date (UTC)", generated.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    if study.verdict:
        reading = ("agreed" if study.verdict == "agree"
                   else f"corrected to {study.verdict}")
        rows.append(("Reader's feedback", reading))
    y = 0.895
    for name, value in rows:
        fig.text(0.56, y, name, fontsize=8, color="0.35")
        fig.text(0.56, y - 0.017, value, fontsize=11,
                 weight="bold" if name == "Result" else "normal")
        y -= 0.048
    if study.inconclusive:
        fig.text(0.56, y, "\n".join(textwrap.wrap(
            "Inconclusive: on validation, the model was clearly less often right at "
            "probabilities this close to the threshold.", 48)), fontsize=8, va="top")

    fig.text(0.07, 0.48, "\n".join(textwrap.wrap(STATEMENT, 95)), fontsize=10,
             weight="bold", va="top")

    fig.text(0.07, 0.42, "Reader's notes", fontsize=12, weight="bold")
    typed = "\n".join(line for paragraph in (notes or "").splitlines()
                      for line in (textwrap.wrap(paragraph, 100) or [""]))
    if typed:
        fig.text(0.07, 0.40, typed, fontsize=10, va="top")
    box = fig.add_axes([0.07, 0.08, 0.86, 0.33 if not typed else 0.2])
    box.set_xticks([])
    box.set_yticks([])
    for line in np.linspace(0.1, 0.9, 8):
        box.axhline(line, color="0.85", lw=0.6)
    fig.text(0.07, 0.05, "Reader: ______________________    Signature: "
             "______________________    Date: ____________", fontsize=9)
    return _pdf(fig)


#: Serialises the one global setting the PDF backend reads at save time; everything else is
#: set on the figure's own artists, so request threads never change each other's settings.
_SAVE_LOCK = threading.Lock()


def _pdf(fig: Figure) -> bytes:
    import matplotlib

    buffer = io.BytesIO()
    with _SAVE_LOCK, matplotlib.rc_context({"pdf.fonttype": 42}):  # TrueType: extractable text
        fig.savefig(buffer, format="pdf", metadata={
            "Title": "pneumo screening report", "Creator": "pneumo", "Author": None,
            "Subject": None, "Keywords": None})
    return buffer.getvalue()


class _PlainFigure(Figure):
    """A figure whose text is always plain: ``$`` in a reader's note is a dollar sign,
    never matplotlib math text (which misrenders "$5 and $10" and fails on "$x^$")."""

    def text(self, x, y, s, fontdict=None, **kwargs):
        kwargs.setdefault("fontsize", 10)
        return super().text(x, y, s, fontdict, parse_math=False, **kwargs)
