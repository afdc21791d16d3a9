// A FOMO-style detection model's output tensor to detections (see detect_decode.h for the contract).
//
// Each step mirrors a line of edgepipe/tasks/detection_decode.py `decode`, in the same order and the
// same precision, so the two agree bit for bit; the comments say where the order or precision matters.
#include "detect_decode.h"

#include <string.h>

// The tensor being decoded: exactly one of `q` (int8, with its quantisation) and `f` is set.
typedef struct source {
  const int8_t* q;
  const float* f;
  float scale;
  int32_t zero_point;
  size_t channels;
} source;

// The probability (or size) at flat index i, dequantised as edgepipe's Python does it,
// `(q.astype(float32) - zero_point) * scale`: q - zero_point is exact in float32, then one float32
// product, correctly rounded on any IEEE float unit.
static float value(const source* s, size_t i) {
  if (s->q != NULL) return (float)((int32_t)s->q[i] - s->zero_point) * s->scale;
  return s->f[i];
}

// Python's float32 NaN (`np.float32(math.nan)`), built from its bits so no <math.h> is needed.
static float quiet_nan(void) {
  const uint32_t bits = 0x7fc00000u;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

size_t detect_decode_work_bytes(int rows, int cols) {
  if (rows < 1 || cols < 1 || rows > DETECT_DECODE_MAX_CELLS / cols) return 0;
  return DETECT_DECODE_WORK_BYTES(rows, cols);
}

// The 8 neighbours as (row, column) steps, in the Python's order; the order changes only which cell is
// pushed first, never a blob.
static const int8_t kNeighbours[8][2] = {{-1, -1}, {-1, 0}, {-1, 1}, {0, -1},
                                         {0, 1},   {1, -1}, {1, 0},  {1, 1}};

static int decode(const source* src, const detect_grid* g, void* work, size_t work_bytes,
                  detect_detection* out, int max_detections) {
  if (g == NULL || out == NULL || work == NULL || max_detections < 0) return DETECT_DECODE_EINVAL;
  if (g->classes < 1 || g->stride < 1 || (g->has_size != 0 && g->has_size != 1)) return DETECT_DECODE_EINVAL;
  const size_t need = detect_decode_work_bytes(g->rows, g->cols);
  if (need == 0) return DETECT_DECODE_EINVAL;
  if (work_bytes < need || ((uintptr_t)work % sizeof(double)) != 0) return DETECT_DECODE_EWORK;
  if (max_detections == 0) return 0;

  const int rows = g->rows, cols = g->cols;
  const size_t cells = (size_t)rows * (size_t)cols;
  const size_t max_blobs = DETECT_DECODE_MAX_BLOBS(rows, cols);
  // The work buffer, doubles first for their alignment.
  double* weight = (double*)work;
  double* sum_x = weight + max_blobs;
  double* sum_y = sum_x + max_blobs;
  float* best = (float*)(sum_y + max_blobs);
  uint16_t* peak = (uint16_t*)(best + max_blobs);
  uint16_t* label = peak + max_blobs;  // blob number of each cell, 0: not hot (blobs < 2^14)
  uint16_t* stack = label + cells;     // each cell is pushed once, when labelled: cells slots suffice

  const size_t size_channel = (size_t)g->classes + 1u;
  const double stride = (double)g->stride;
  const double image_w = (double)cols * stride, image_h = (double)rows * stride;
  const float threshold = g->threshold;
  const float nan = quiet_nan();
  int n = 0;

  for (int c = 0; c < g->classes; ++c) {
    const size_t channel = (size_t)c + 1u;
    // Label the blobs: scan in raster order, flood-fill from each unlabelled hot cell.
    memset(label, 0, cells * sizeof *label);
    size_t blobs = 0;
    for (size_t start = 0; start < cells; ++start) {
      // `!(p > t)`, not `p <= t`: a NaN probability is not hot, as in the Python.
      if (label[start] != 0 || !(value(src, start * src->channels + channel) > threshold)) continue;
      ++blobs;
      label[start] = (uint16_t)blobs;
      size_t top = 0;
      stack[top++] = (uint16_t)start;
      while (top > 0) {
        const size_t i = stack[--top];
        const int r = (int)(i / (size_t)cols), q = (int)(i % (size_t)cols);
        for (int k = 0; k < 8; ++k) {
          const int rr = r + kNeighbours[k][0], qq = q + kNeighbours[k][1];
          if (rr < 0 || rr >= rows || qq < 0 || qq >= cols) continue;
          const size_t j = (size_t)rr * (size_t)cols + (size_t)qq;
          if (label[j] == 0 && value(src, j * src->channels + channel) > threshold) {
            label[j] = (uint16_t)blobs;
            stack[top++] = (uint16_t)j;
          }
        }
      }
    }
    if (blobs == 0) continue;

    // Sum each blob's cells in raster order, after labelling, as the Python does: a float sum depends
    // on its order. p * (col + 0.5) is exact in double (24 by at most 17 significant bits).
    for (size_t k = 0; k < blobs; ++k) {
      weight[k] = sum_x[k] = sum_y[k] = 0.0;
      best[k] = -1.0f;
      peak[k] = 0;
    }
    for (size_t i = 0; i < cells; ++i) {
      if (label[i] == 0) continue;
      const size_t k = (size_t)label[i] - 1u;
      const float s = value(src, i * src->channels + channel);
      const double sd = (double)s;
      weight[k] += sd;
      sum_x[k] += sd * ((double)(i % (size_t)cols) + 0.5);
      sum_y[k] += sd * ((double)(i / (size_t)cols) + 0.5);
      if (s > best[k]) {  // strictly: the first cell in raster order wins a tie
        best[k] = s;
        peak[k] = (uint16_t)i;
      }
    }

    for (size_t k = 0; k < blobs; ++k) {
      if (n == max_detections) return n;  // the cap keeps the first detections in output order
      const double cx = stride * (sum_x[k] / weight[k]);
      const double cy = stride * (sum_y[k] / weight[k]);
      detect_detection* d = &out[n++];
      d->class_id = (float)c;
      d->score = best[k];
      d->cx = (float)cx;
      d->cy = (float)cy;
      if (g->has_size) {
        const size_t at = (size_t)peak[k] * src->channels + size_channel;
        double w = (double)value(src, at), h = (double)value(src, at + 1u);
        // Python's max(0.0, w): anything not above 0 (a negative size, -0.0, NaN) becomes +0.0.
        if (!(w > 0.0)) w = 0.0;
        if (!(h > 0.0)) h = 0.0;
        w *= image_w;  // exact: a float32 times a small whole number
        h *= image_h;
        d->x0 = (float)(cx - 0.5 * w);
        d->y0 = (float)(cy - 0.5 * h);
        d->x1 = (float)(cx + 0.5 * w);
        d->y1 = (float)(cy + 0.5 * h);
      } else {
        d->x0 = d->y0 = d->x1 = d->y1 = nan;
      }
    }
  }
  return n;
}

int detect_decode_int8(const int8_t* output, float scale, int32_t zero_point, const detect_grid* grid,
                       void* work, size_t work_bytes, detect_detection* out, int max_detections) {
  if (output == NULL || grid == NULL) return DETECT_DECODE_EINVAL;
  const source src = {output, NULL, scale, zero_point,
                      (size_t)grid->classes + 1u + (grid->has_size ? 2u : 0u)};
  return decode(&src, grid, work, work_bytes, out, max_detections);
}

int detect_decode_float(const float* output, const detect_grid* grid, void* work, size_t work_bytes,
                        detect_detection* out, int max_detections) {
  if (output == NULL || grid == NULL) return DETECT_DECODE_EINVAL;
  const source src = {NULL, output, 0.0f, 0, (size_t)grid->classes + 1u + (grid->has_size ? 2u : 0u)};
  return decode(&src, grid, work, work_bytes, out, max_detections);
}
