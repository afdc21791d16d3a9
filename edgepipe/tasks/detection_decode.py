"""A FOMO-style heat map (and optional size head) to detections, and ground-truth boxes to training targets.

The model's outputs, at 1/`stride` of the input resolution (stride 8: a 96x96 image gives a 12x12 grid):

- **heat map** `(gh, gw, C + 1)`: a per-cell softmax; channel 0 is background, channel `c + 1` is class `c`
  (Edge Impulse's FOMO layout);
- **size map** (optional) `(gh, gw, 2)`: the object's box width and height **as fractions of the image's
  width and height** (so a 24 px box in a 96 px image is 0.25). Fractions keep the regression target in
  [0, 1], where an int8 output's 256 steps are 0.375 px apart at 96 px and an L1 loss is on the scale of the
  heat map's.

Ground truth, per image: a float32 array `(max_objects, 5)` of rows `[class, x0, y0, x1, y1]` in pixels
(`x1`, `y1` exclusive edges: a box's width is `x1 - x0`), class -1 for padding rows.

**Decoding** (`decode`), for each class `c` in increasing order:

1. a cell is *hot* when its probability is strictly above the threshold (0.5 by default), compared in
   float32: Edge Impulse's `segmentation_map[..., c] > minimum_confidence_rating`
   (`ei_tensorflow/constrained_object_detection/util.py`). Strictly above matters for int8 outputs, whose
   scale of 1/256 makes 0.5 an exact output value; it also means at most one class can be hot in a cell;
2. hot cells that touch, sides **or corners** (8-connectivity), form one blob. Edge Impulse fuses cells whose
   boxes overlap or touch, corners included (`BoundingBox.update_with_overlap` compares with `>` / `<`, so
   boxes sharing an edge or a corner fuse): that is 8-connectivity. Unlike Edge Impulse's single greedy pass,
   which grows a bounding box and depends on the scan order, the blobs here are exact connected components;
3. each blob is one detection: its **score is the blob's highest probability**, as Edge Impulse keeps;
   its **centre is the probability-weighted mean of its cells' centres**, in pixels (the centre of cell
   `(row, col)` is `((col + 0.5) * stride, (row + 0.5) * stride)`). Edge Impulse takes the centre of the
   fused cells' bounding box instead; weighting by probability keeps where in a blob the model is surest,
   and the two agree on single cells and symmetric blobs;
4. with a size map, the box is centred on that centre with the width and height read at the blob's **peak
   cell** (its highest-probability cell; the first one in raster order on a tie), as CenterNet reads its
   size head at the peak. The size is clamped at 0 and the box is not clipped to the image (clipping would
   move its centre). Without a size map the box columns are NaN: a heat map alone gives no object size.

Output: a float32 array `(n, 8)` with the columns `DETECTION_COLUMNS` =
`class, score, cx, cy, x0, y0, x1, y1` (class 0-based, as in the ground truth), ordered by class, then by
the raster position (row, then column) of each blob's first cell.

For a C port: blobs are labelled by scanning the cells in raster order and flood-filling from each unlabelled
hot cell with an explicit stack of at most `gh * gw` cell indices (each cell is pushed once, when labelled);
sums run in double, in raster order, over each blob's cells, after labelling; `cx = stride * (sum(p * (col +
0.5)) / sum(p))`; `w = max(0, size_w) * image_width`, box edges `cx -/+ 0.5 * w`, in double; results are
rounded to float32 once.

**Encoding** (`encode`): the cell holding an object's centre `((x0 + x1) / 2, (y0 + y1) / 2)`,
`col = floor(cx / stride)` (clamped to the grid, so a centre on the right or bottom edge stays inside), gets
the object's class one-hot and the object's size as fractions of the image. The other cells are background
(channel 0 = 1) with a zero size and a zero size mask. Two objects whose centres share a cell cannot both be
encoded (FOMO's known merge): the cell keeps the larger box (by area), and on equal areas the earlier row.
"""

from __future__ import annotations

import math

import numpy as np

#: the heat map's cell size in input pixels (FOMO cuts MobileNetV2 at 1/8 resolution)
STRIDE = 8
#: a cell is hot when its probability is strictly above this (Edge Impulse's minimum confidence rating)
THRESHOLD = 0.5

#: the columns of a detections array, in order
DETECTION_COLUMNS = ("class", "score", "cx", "cy", "x0", "y0", "x1", "y1")
CLASS, SCORE, CX, CY, X0, Y0, X1, Y1 = range(len(DETECTION_COLUMNS))

# the 8 neighbours of a cell as (row, column) steps; the order the flood fill visits them does not change
# a blob, only the order cells are pushed
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def empty_detections() -> np.ndarray:
    """A detections array with no rows: `(0, 8)` float32."""
    return np.zeros((0, len(DETECTION_COLUMNS)), np.float32)


def _check_maps(heat_map, size_map) -> tuple[np.ndarray, np.ndarray | None]:
    heat = np.asarray(heat_map, np.float32)
    if heat.ndim != 3 or heat.shape[2] < 2:
        raise ValueError(f"a heat map is (rows, cols, classes + 1) with at least one class, not {heat.shape}")
    if size_map is None:
        return heat, None
    size = np.asarray(size_map, np.float32)
    if size.shape != heat.shape[:2] + (2,):
        raise ValueError(f"a size map is (rows, cols, 2) like its heat map {heat.shape[:2]}, not {size.shape}")
    return heat, size


def decode(
    heat_map: np.ndarray, size_map: np.ndarray | None = None, *, threshold: float = THRESHOLD, stride: int = STRIDE
) -> np.ndarray:
    """One image's detections from its heat map and optional size map (the module docstring's rules).

    Args:
        heat_map: `(gh, gw, C + 1)` per-cell class probabilities, channel 0 background.
        size_map: `(gh, gw, 2)` box width and height as fractions of the image's, or None (no boxes).
        threshold: a cell is hot when its probability is strictly above this, compared in float32
            (0.5: Edge Impulse's FOMO default).
        stride: input pixels per cell (8); the image is `(gh * stride, gw * stride)` pixels.

    Returns:
        float32 `(n, 8)`: `class, score, cx, cy, x0, y0, x1, y1` per detection, in pixels, ordered by class
        then by the raster position of the blob's first cell; the box columns are NaN without a size map.
    """
    heat, size = _check_maps(heat_map, size_map)
    gh, gw, channels = heat.shape
    image_w, image_h = gw * stride, gh * stride
    threshold = float(np.float32(threshold))  # compare as float32 does, so a C `p > 0.3f` agrees
    widths = heights = None
    if size is not None:
        widths, heights = size[:, :, 0].ravel().tolist(), size[:, :, 1].ravel().tolist()
    cells = gh * gw
    label = [0] * cells  # blob number of each cell, 0: not hot
    rows = []
    for c in range(channels - 1):
        p = heat[:, :, c + 1].ravel().tolist()  # float32 values, exactly, as Python floats
        for i in range(cells):
            label[i] = 0
        blobs = 0
        for start in range(cells):
            if label[start] != 0 or not p[start] > threshold:
                continue
            blobs += 1
            label[start] = blobs
            stack = [start]
            while stack:
                i = stack.pop()
                r, q = divmod(i, gw)
                for dr, dq in _NEIGHBOURS:
                    rr, qq = r + dr, q + dq
                    if 0 <= rr < gh and 0 <= qq < gw:
                        j = rr * gw + qq
                        if label[j] == 0 and p[j] > threshold:
                            label[j] = blobs
                            stack.append(j)
        if blobs == 0:
            continue
        weight = [0.0] * (blobs + 1)
        sum_x = [0.0] * (blobs + 1)
        sum_y = [0.0] * (blobs + 1)
        best = [-1.0] * (blobs + 1)
        peak = [0] * (blobs + 1)
        for i in range(cells):
            k = label[i]
            if k == 0:
                continue
            r, q = divmod(i, gw)
            s = p[i]
            weight[k] += s
            sum_x[k] += s * (q + 0.5)
            sum_y[k] += s * (r + 0.5)
            if s > best[k]:  # strictly: the first cell in raster order wins a tie
                best[k] = s
                peak[k] = i
        for k in range(1, blobs + 1):
            cx = stride * (sum_x[k] / weight[k])
            cy = stride * (sum_y[k] / weight[k])
            if widths is None:
                x0 = y0 = x1 = y1 = math.nan
            else:
                w = max(0.0, widths[peak[k]]) * image_w
                h = max(0.0, heights[peak[k]]) * image_h
                x0, y0, x1, y1 = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h
            rows.append((c, best[k], cx, cy, x0, y0, x1, y1))
    if not rows:
        return empty_detections()
    return np.array(rows, np.float64).astype(np.float32)


def decode_batch(
    heat_maps: np.ndarray, size_maps: np.ndarray | None = None, *, threshold: float = THRESHOLD, stride: int = STRIDE
) -> list[np.ndarray]:
    """`decode` of each image of a batch `(N, gh, gw, C + 1)` (and `(N, gh, gw, 2)` sizes): a list of N arrays."""
    if size_maps is not None and len(size_maps) != len(heat_maps):
        raise ValueError(f"{len(heat_maps)} heat maps but {len(size_maps)} size maps")
    return [
        decode(h, None if size_maps is None else size_maps[i], threshold=threshold, stride=stride)
        for i, h in enumerate(heat_maps)
    ]


def centre_cell(box, grid_shape: tuple[int, int], stride: int = STRIDE) -> tuple[int, int]:
    """The `(row, col)` of the cell holding a box's centre; `box` is `[x0, y0, x1, y1]` in pixels.

    `col = floor(((x0 + x1) / 2) / stride)`, clamped to `[0, gw - 1]` (a centre on the image's right edge
    stays in the last column); rows likewise.
    """
    gh, gw = grid_shape
    x0, y0, x1, y1 = (float(v) for v in box)
    col = math.floor(0.5 * (x0 + x1) / stride)
    row = math.floor(0.5 * (y0 + y1) / stride)
    return min(max(row, 0), gh - 1), min(max(col, 0), gw - 1)


def objects(gt: np.ndarray, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The real objects of one image's padded ground truth: `(classes int64 (n,), boxes float64 (n, 4))`.

    Rows of class -1 are padding and dropped, wherever they are. Raises ValueError for a class that is not
    a whole number in `[0, num_classes)` (when given) or a box with `x1 < x0` or `y1 < y0`.
    """
    gt = np.asarray(gt, np.float64)
    if gt.ndim != 2 or gt.shape[1] != 5:
        raise ValueError(f"ground truth is (max_objects, 5) rows [class, x0, y0, x1, y1], not {gt.shape}")
    real = gt[gt[:, 0] != -1]
    classes = real[:, 0]
    bad = (classes != np.floor(classes)) | (classes < 0)
    if num_classes is not None:
        bad |= classes >= num_classes
    if bad.any():
        raise ValueError(
            f"ground-truth class {float(classes[bad][0])!r} is not -1 (padding) or a class index in "
            f"[0, {num_classes if num_classes is not None else 'C'})"
        )
    boxes = real[:, 1:5]
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(f"ground-truth box {boxes[inverted][0].tolist()} has x1 < x0 or y1 < y0")
    return classes.astype(np.int64), boxes


def encode(
    gt: np.ndarray, grid_shape: tuple[int, int], num_classes: int, *, stride: int = STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's training targets from its padded ground truth (the module docstring's rules).

    Args:
        gt: `(max_objects, 5)` rows `[class, x0, y0, x1, y1]` in pixels, class -1 for padding.
        grid_shape: `(gh, gw)`, the heat map's rows and columns.
        num_classes: C, the object classes (the heat map has C + 1 channels).
        stride: input pixels per cell (8).

    Returns:
        `heat (gh, gw, C + 1)` one-hot per cell (background channel 0 where no object's centre falls),
        `size (gh, gw, 2)` the object's width and height as fractions of the image's, and
        `size_mask (gh, gw)` 1 where a size target is set, 0 elsewhere (the size loss's weights); all float32.
    """
    gh, gw = grid_shape
    image_w, image_h = gw * stride, gh * stride
    classes, boxes = objects(gt, num_classes)
    heat = np.zeros((gh, gw, num_classes + 1), np.float32)
    heat[:, :, 0] = 1.0
    size = np.zeros((gh, gw, 2), np.float32)
    mask = np.zeros((gh, gw), np.float32)
    owner_area = [-1.0] * (gh * gw)
    for c, box in zip(classes.tolist(), boxes.tolist()):
        r, q = centre_cell(box, grid_shape, stride)
        w, h = box[2] - box[0], box[3] - box[1]
        if w * h > owner_area[r * gw + q]:  # a shared cell keeps the larger box, on a tie the earlier row
            owner_area[r * gw + q] = w * h
            heat[r, q, :] = 0.0
            heat[r, q, c + 1] = 1.0
            size[r, q] = (w / image_w, h / image_h)
            mask[r, q] = 1.0
    return heat, size, mask


def encode_batch(
    gts: np.ndarray, grid_shape: tuple[int, int], num_classes: int, *, stride: int = STRIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`encode` of each image of `(N, max_objects, 5)`: heat `(N, gh, gw, C + 1)`, size `(N, gh, gw, 2)`,
    size_mask `(N, gh, gw)`."""
    gh, gw = grid_shape
    heat = np.zeros((len(gts), gh, gw, num_classes + 1), np.float32)
    size = np.zeros((len(gts), gh, gw, 2), np.float32)
    mask = np.zeros((len(gts), gh, gw), np.float32)
    for i, gt in enumerate(gts):
        heat[i], size[i], mask[i] = encode(gt, grid_shape, num_classes, stride=stride)
    return heat, size, mask
