"""``report.html``: the evaluation as one self-contained page (every image inlined as a data URI, no script or
style from the network) - the tables with their paired intervals, the curves, and a gallery of every image's
overlays for every method with its AUCs, sortable by where akd wins or loses most."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

THUMBNAIL = 128  # pixels, the gallery's overlay size


def _data_uri(image_bgr: np.ndarray) -> str:
    import cv2

    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("could not encode a gallery image")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode()


class Gallery:
    """Per image, a thumbnail and each method's overlay, encoded as the maps arrive (no map is kept)."""

    def __init__(self):
        self.images: dict[str, dict[str, str]] = {}

    def add(self, name: str, pixels_rgb: np.ndarray, method: str, saliency: np.ndarray) -> None:
        import cv2

        from akd.evaluation.metrics import normalise

        frame = cv2.resize(np.ascontiguousarray(pixels_rgb[..., ::-1]), (THUMBNAIL, THUMBNAIL))
        entry = self.images.setdefault(name, {"": _data_uri(frame)})
        heat = cv2.applyColorMap((cv2.resize(normalise(saliency), (THUMBNAIL, THUMBNAIL)) * 255).astype(np.uint8),
                                 cv2.COLORMAP_JET)
        entry[method] = _data_uri(cv2.addWeighted(frame, 0.5, heat, 0.5, 0))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(report: dict[str, Any]) -> str:
    results = report["results"]
    keys = [k for k in ("insertion", "deletion", "intensity", "pointing", "energy_pointing")
            if k in next(iter(results.values()))["all"]]
    quality = [[name, str(len(result["per_image"]))] +
               [f"{result['all'][k]['mean']:.4f} ± {result['all'][k]['std']:.3f}" for k in keys]
               for name, result in results.items()]
    speed = [[name, f"{result['seconds']['median']:.4f}", f"{1 / result['seconds']['median']:.2f}"]
             for name, result in results.items()]
    differences = ("insertion", "deletion", "intensity")
    paired = [[name, str(entry["insertion"]["count"])] +
              [f"{entry[k]['mean']:+.4f} [{entry[k]['ci95'][0]:+.4f}, {entry[k]['ci95'][1]:+.4f}]" for k in differences]
              for name, entry in report["paired"].items()]
    not_run = report.get("not_run") or {}
    return ("<h2>Faithfulness</h2>" + _table(["method", "images", *keys], quality) +
            "<h2>Paired differences (mean, 95% bootstrap interval)</h2>" +
            _table(["akd - baseline", "images", *differences], paired) +
            "<h2>Speed (median seconds per image, batch 1)</h2>" +
            _table(["method", "seconds / image", "images / s"], speed) +
            "".join(f"<p>Not run: {html.escape(name)} ({html.escape(why)})</p>" for name, why in not_run.items()))


def _gallery(report: dict[str, Any], gallery: Gallery) -> str:
    methods = list(report["results"])
    ours = next((name for name in methods if name.startswith("akd")), methods[0])
    scores = {name: {row["image"]: row for row in result["per_image"]} for name, result in report["results"].items()}
    rows = []
    for image, overlays in gallery.images.items():
        theirs = [scores[name][image]["insertion"] for name in methods if name != ours and image in scores[name]]
        margin = (scores[ours][image]["insertion"] - max(theirs)) if image in scores[ours] and theirs else 0.0
        cells = [f'<td><img src="{overlays[""]}" alt="{html.escape(image)}"><br>{html.escape(image[:28])}</td>']
        for name in methods:
            row = scores[name].get(image)
            text = (f"ins {row['insertion']:.3f} / del {row['deletion']:.3f}" if row else "not run")
            picture = f'<img src="{overlays[name]}" alt="{html.escape(name)}">' if name in overlays else ""
            cells.append(f"<td>{picture}<br>{text}</td>")
        rows.append(f'<tr data-margin="{margin:.6f}" data-name="{html.escape(image)}">{"".join(cells)}</tr>')
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ["image", *methods])
    return (f"<h2>Gallery</h2><p>Margin: {html.escape(ours)}'s insertion minus the best other method's, per image. "
            'Sort: <button id="wins">akd wins most</button> <button id="loses">akd loses most</button> '
            '<button id="names">by name</button></p>'
            f'<table id="gallery"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


SCRIPT = """
const body = document.querySelector('#gallery tbody');
function sortRows(key, direction) {
  const rows = Array.from(body.rows);
  rows.sort((a, b) => key === 'name' ? a.dataset.name.localeCompare(b.dataset.name) * direction
                                     : (parseFloat(a.dataset.margin) - parseFloat(b.dataset.margin)) * direction);
  rows.forEach(row => body.appendChild(row));
}
document.getElementById('wins').addEventListener('click', () => sortRows('margin', -1));
document.getElementById('loses').addEventListener('click', () => sortRows('margin', 1));
document.getElementById('names').addEventListener('click', () => sortRows('name', 1));
"""
STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
         "td,th{border:1px solid #ccc;padding:4px;text-align:center;font-size:12px}img{display:block;margin:auto}")


def render(report: dict[str, Any], curves_png: bytes, gallery: Gallery) -> str:
    title = f"akd-evaluate: {report['target'].get('name', 'target')} on {report['data']}"
    curves = "data:image/png;base64," + base64.b64encode(curves_png).decode()
    settings = html.escape(json.dumps(report["settings"]))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{report['images']} images ({report['skipped']} unreadable skipped), {report['common_images']} "
            f"explained by every method. Settings: <code>{settings}</code></p>{_tables(report)}"
            f'<h2>Mean insertion and deletion curves</h2><img src="{curves}" alt="curves">'
            f"{_gallery(report, gallery)}<script>{SCRIPT}</script></body></html>")
