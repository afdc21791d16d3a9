"""Object detection: objects' centres (and with a size head, boxes) read from a heat map at 1/8 resolution.

Labels: per image a float32 `(max_objects, 5)` array of `[class, x0, y0, x1, y1]` rows in pixels, class -1
for padding (`detection_decode`'s format). A model outputs, per cell of the 1/`STRIDE` grid, a softmax over
background (channel 0) and the classes, optionally followed by two size channels (the box's width and height
as fractions of the image): `(gh, gw, C + 1)` or `(gh, gw, C + 3)`. It is trained on FOMO's weighted
cross-entropy (an object's cell weighs `object_weight` times a background cell: most cells are background),
plus an L1 loss on the size of the cells that hold an object. It is judged by the centroid F1 at 0.2 of the
image size, one prediction per object (`detection_metrics.DEFINITIONS` has every metric's thresholds).

The training targets differ from FOMO's in one way: an object claims its centre's cell (as in FOMO) and also
every cell whose square lies within `CENTRE_MARGIN_PX` of its centre. FOMO's single cell makes the target
flip between two neighbouring cells as a centre crosses their border, which the input hardly shows: a
model then splits its probability between the two, and at the 0.5 threshold finds neither unless
`object_weight` is large, which in turn fires on distractors and textures. With the margin, a centre near a
border lights both cells, which the decoding fuses into one detection (adjacent hot cells are one blob);
the centre's own cell stays a positive by at least the margin. See `targets`.
"""

from __future__ import annotations

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.tasks import detection_metrics
from edgepipe.tasks.detection_decode import CLASS, CX, CY, STRIDE, decode_batch, encode_batch
from edgepipe.tasks.protocol import Task

#: test scenes whose detections a bench row keeps for the report's picture
SHOWN = 24
#: two decoded detections agree when their classes are equal and their centres this many pixels apart at most
AGREEMENT_PX = STRIDE / 2
#: a cell is an object's training target when its square lies within this many pixels of the object's centre
#: (its centre's own cell always is); 0 gives FOMO's single cell
CENTRE_MARGIN_PX = 3.0


class Detection(Task):
    name = "detection"
    headline = "f1_d0.2"
    headline_label = "F1 (centroid within 0.2 of the image, one-to-one)"
    headline_short = "F1"
    report_metrics = (
        "precision_d0.2",
        "recall_d0.2",
        "ei_f1_d0.2",
        "f1_1cell",
        "count_mae",
        "mean_iou_d0.2",
        "map_iou0.5",
        "map_iou0.5-0.95",
    )
    agreement_name = "detections_agreement"
    agreement_label = "share of images with the same detections"
    distils = True

    def check_labels(self, y, classes, where):
        y = np.asarray(y)
        if y.ndim != 3 or y.shape[-1] != 5:
            raise EdgepipeError(
                f"{where}: detection labels have shape {list(y.shape)}, not (images, max_objects, 5)",
                "give [class, x0, y0, x1, y1] rows per image, class -1 for padding",
            )
        if not np.all(np.isfinite(y)):
            raise EdgepipeError(f"{where}: detection labels hold NaN or infinity", "fix the boxes")
        cls = y[..., 0]
        if np.any(cls != np.round(cls)) or np.any(cls < -1) or np.any(cls >= len(classes)):
            raise EdgepipeError(
                f"{where}: box classes run {cls.min():g}..{cls.max():g} for {len(classes)} classes",
                "classes must be 0..num_classes-1, -1 for padding",
            )
        real = cls >= 0
        if np.any((y[..., 3] <= y[..., 1])[real] | (y[..., 4] <= y[..., 2])[real]):
            raise EdgepipeError(f"{where}: a box has no area (x1 <= x0 or y1 <= y0)", "fix or drop the box")
        return y.astype(np.float32)

    def output_shape(self, info):
        h, w = info["input_shape"][:2]
        return (h // STRIDE, w // STRIDE, len(info["classes"]) + 1)

    def check_output(self, shape, info):
        grid = self.output_shape(info)
        c = len(info["classes"])
        if tuple(shape[:2]) != grid[:2] or shape[-1] not in (c + 1, c + 3):
            return (
                f"a {grid[0]}x{grid[1]} grid of {c + 1} channels (background and {c} classes), or "
                f"{c + 3} with a size head"
            )
        return None

    def targets(self, y, info):
        """Per cell: the one-hot heat map, the size and the size mask (`detection_decode.encode`), with every
        background cell within `CENTRE_MARGIN_PX` of an object's centre claimed by that object too (class,
        size and mask; the nearest centre wins a cell several claim)."""
        gh, gw, _ = self.output_shape(info)
        y = np.asarray(y, np.float32)
        heat, size, mask = encode_batch(y, (gh, gw), len(info["classes"]), stride=STRIDE)
        if CENTRE_MARGIN_PX > 0 and y.size:
            _claim_margin(y, heat, size, mask, CENTRE_MARGIN_PX)
        return np.concatenate([heat, size, mask[..., None]], axis=-1)

    def loss(self, info, fit=None):
        from edgepipe.core._tf import tf

        c1 = len(info["classes"]) + 1
        object_weight = fit.object_weight if fit else 100.0  # FOMO's (Fit's default)

        def detection_loss(y_true, y_pred):
            heat = y_true[..., :c1]
            probs = tf.clip_by_value(y_pred[..., :c1], 1e-7, 1.0)
            weight = 1.0 + (object_weight - 1.0) * (1.0 - heat[..., 0])
            loss = tf.reduce_mean(weight * -tf.reduce_sum(heat * tf.math.log(probs), axis=-1))
            if y_pred.shape[-1] == c1 + 2:  # the size head: L1 on the cells that hold an object
                mask = y_true[..., c1 + 2]
                l1 = tf.reduce_sum(tf.abs(y_pred[..., c1:] - y_true[..., c1 : c1 + 2]), axis=-1)
                loss += tf.reduce_sum(mask * l1) / tf.maximum(tf.reduce_sum(mask), 1.0)
            return loss

        return detection_loss

    def soft_loss(self, info, fit, temperature):
        """Per cell, KL between the teacher's and the student's class distributions softened by `temperature`
        (T^2-scaled as Hinton's), an object-like cell weighing `object_weight` times as in the hard loss; with
        two size heads, L1 to the teacher's sizes weighted by its object probability. The heat maps are
        probabilities: softmax(log p / T) is softmax(logits / T), so no logits are needed."""
        from edgepipe.core._tf import tf

        c1 = len(info["classes"]) + 1
        object_weight = fit.object_weight if fit else 100.0

        def detection_soft_loss(teacher, student):
            log_t = tf.math.log(tf.clip_by_value(teacher[..., :c1], 1e-7, 1.0)) / temperature
            log_s = tf.math.log(tf.clip_by_value(student[..., :c1], 1e-7, 1.0)) / temperature
            p_t = tf.nn.softmax(log_t)
            kl = tf.reduce_sum(p_t * (tf.nn.log_softmax(log_t) - tf.nn.log_softmax(log_s)), axis=-1)
            objectness = 1.0 - teacher[..., 0]
            weight = 1.0 + (object_weight - 1.0) * objectness
            loss = temperature**2 * tf.reduce_mean(weight * kl)  # the scale of the hard loss's weighted mean
            if teacher.shape[-1] == c1 + 2 and student.shape[-1] == c1 + 2:
                l1 = tf.reduce_sum(tf.abs(student[..., c1:] - teacher[..., c1:]), axis=-1)
                loss += tf.reduce_sum(objectness * l1) / tf.maximum(tf.reduce_sum(objectness), 1.0)
            return loss

        return detection_soft_loss

    def decode(self, outputs, info):
        """Per image, `(n, 8)` detections (`detection_decode.decode`)."""
        c1 = len(info["classes"]) + 1
        sizes = outputs[..., c1 : c1 + 2] if outputs.shape[-1] >= c1 + 2 else None
        return decode_batch(outputs[..., :c1], sizes, stride=STRIDE)

    def metrics(self, y, outputs, info):
        preds = self.decode(outputs, info)
        h, w = info["input_shape"][:2]
        out = detection_metrics.summary(
            preds,
            np.asarray(y, np.float32),
            image_size=(h, w),
            num_classes=len(info["classes"]),
            stride=STRIDE,
            boxes=outputs.shape[-1] > len(info["classes"]) + 1,  # a size head: box metrics, even with no detection
        )
        out["samples"] = len(preds)
        out["definitions"] = {k: detection_metrics.DEFINITIONS[k] for k in out if k in detection_metrics.DEFINITIONS}
        return out

    def examples(self, outputs, info):
        return {"detections_shown": [d.round(2).tolist() for d in self.decode(outputs[:SHOWN], info)]}

    def pictures(self, x, y, outputs, info, out):
        from edgepipe.tasks.detection_pictures import box_grid

        n = len(outputs)
        box_grid(
            x[:n],
            y[:n],
            self.decode(outputs, info),
            info["classes"],
            out / "predictions.png",
            title="test scenes: truth (green) and detections (red)",
        )

    def agreement(self, reference, outputs, info):
        a, b = self.decode(reference, info), self.decode(outputs, info)
        return float(np.mean([_same(p, q) for p, q in zip(a, b)])) if a else 1.0


def _claim_margin(y: np.ndarray, heat: np.ndarray, size: np.ndarray, mask: np.ndarray, margin: float) -> None:
    """In place: every background cell whose square is within `margin` px of an object's centre becomes that
    object's (the nearest centre's when several are), with its class, size and size mask."""
    _, gh, gw, _ = heat.shape
    cls = y[..., 0]
    cx, cy = (y[..., 1] + y[..., 3]) / 2, (y[..., 2] + y[..., 4]) / 2  # (n, max_objects)
    left, top = np.arange(gw) * STRIDE, np.arange(gh) * STRIDE
    # distance from each centre to each cell's square [left, left + STRIDE] x [top, top + STRIDE]
    dx = np.maximum(0, np.maximum(left - cx[..., None], cx[..., None] - (left + STRIDE)))  # (n, m, gw)
    dy = np.maximum(0, np.maximum(top - cy[..., None], cy[..., None] - (top + STRIDE)))  # (n, m, gh)
    dist = np.where((cls >= 0)[..., None, None], np.hypot(dy[..., :, None], dx[..., None, :]), np.inf)
    nearest, best = dist.argmin(1), dist.min(1)  # (n, gh, gw)
    i, r, q = np.nonzero((best <= margin) & (heat[..., 0] == 1))
    k = nearest[i, r, q]
    heat[i, r, q, 0] = 0
    heat[i, r, q, cls[i, k].astype(np.int64) + 1] = 1
    size[i, r, q, 0] = (y[i, k, 3] - y[i, k, 1]) / (gw * STRIDE)
    size[i, r, q, 1] = (y[i, k, 4] - y[i, k, 2]) / (gh * STRIDE)
    mask[i, r, q] = 1


def _same(p: np.ndarray, q: np.ndarray) -> bool:
    """Whether two images' detections are the same: as many, pairwise of the same class, centres within
    `AGREEMENT_PX` (both are ordered by class, then raster position)."""
    if len(p) != len(q):
        return False
    return bool(
        np.all(p[:, CLASS] == q[:, CLASS])
        and np.all(np.hypot(p[:, CX] - q[:, CX], p[:, CY] - q[:, CY]) <= AGREEMENT_PX)
    )
