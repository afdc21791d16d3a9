"""Tasks: what a dataset's labels mean, what a model is trained to output, and how it is judged.

Object detection (issue #32), numpy only, no TensorFlow:

- `detection_decode`: a FOMO-style heat map (and optional size head) to detections, and ground-truth boxes
  to training targets; written to be ported to C line for line;
- `detection_metrics`: Edge Impulse's centroid precision/recall/F1, a strict one-cell F1, count error, F1
  by object size, and with boxes mean IoU, mAP@0.5 and COCO mAP@[.5:.95].
"""
