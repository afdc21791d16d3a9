// A FOMO-style detection model's output tensor to detections, on the device.
//
// The C port of edgepipe's Python decoding (edgepipe/tasks/detection_decode.py, whose docstring is the
// specification): it gives the same detections, float for float, on the same tensor. The model itself
// keeps to builtin ops (a softmax heat map, optionally two size channels); this file is what turns its
// output into objects, so no custom post-processing op is needed.
//
// Input: one output tensor, NHWC without the batch, `rows x cols x channels` with
// channels = classes + 1 (+ 2 when the model has a size head):
//   channel 0          background probability,
//   channel c + 1      probability of class c,
//   channel classes+1  box width as a fraction of the image width   (size head only),
//   channel classes+2  box height as a fraction of the image height (size head only).
// Either the int8 tensor as TFLite Micro leaves it, with its scale and zero point (dequantised here as
// edgepipe's Python does, `p = (float)(q - zero_point) * scale` in float32), or a float32 tensor.
//
// Decoding, for each class in increasing order: a cell is hot when its probability is strictly above
// the threshold (compared in float32); hot cells touching by a side or a corner form one blob (exact
// connected components, labelled by a flood fill in raster order); each blob is one detection whose
// score is its highest probability, whose centre is the probability-weighted mean of its cells' centres
// (summed in double, in raster order), and whose box (size head only) is centred there with the width
// and height read at the blob's peak cell (the first in raster order on a tie), clamped at 0 and not
// clipped to the image. Without a size head the box fields are NaN. Every float is rounded once, from
// double, as the Python does.
//
// Output order: by class, then by the raster position of each blob's first cell. When there are more
// detections than `max_detections`, the first `max_detections` in that order are kept and the rest are
// not computed (so a cap also bounds the time spent).
//
// No allocation, no libm, no globals: the caller passes one work buffer of
// DETECT_DECODE_WORK_BYTES(rows, cols) bytes (a constant expression, for a static array), aligned like
// a double; a 12 x 12 grid (96 x 96 input at stride 8) needs 1656 bytes. Reentrant.
//
// Compile as C99 or later, without -ffast-math (which would reorder the sums and break the equality
// with the Python decoding). FMA contraction cannot change a result: every product is exact in double.
#ifndef EDGEPIPE_DETECT_DECODE_H_
#define EDGEPIPE_DETECT_DECODE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One detection: 8 floats in the order of the Python decoding's columns (DETECTION_COLUMNS), so an
// array of n of them has the bytes of its float32 (n, 8) array.
typedef struct detect_detection {
  float class_id;  // 0-based class (channel - 1), a whole number; `class` is a C++ keyword
  float score;     // the blob's highest probability
  float cx, cy;    // centre in input pixels
  float x0, y0;    // box corners in input pixels (x1, y1 exclusive edges); NaN without a size head
  float x1, y1;
} detect_detection;

// What the output tensor holds and how to read it.
typedef struct detect_grid {
  int rows, cols;   // gh, gw: the grid of cells (the input is rows * stride x cols * stride pixels)
  int classes;      // C >= 1 object classes (the tensor has C + 1 probability channels)
  int has_size;     // 1: two size channels follow the probabilities; 0: none (centroids only)
  int stride;       // input pixels per cell (8 for FOMO's 1/8 resolution)
  float threshold;  // a cell is hot when its probability is strictly above this (0.5f, Edge Impulse's)
} detect_grid;

// Return values below 0.
#define DETECT_DECODE_EINVAL (-1)  // a NULL pointer, a negative cap, or a grid out of range
#define DETECT_DECODE_EWORK (-2)   // the work buffer is smaller than needed or not aligned like a double

// The largest grid: cell indices are kept in 16 bits to halve the work buffer.
#define DETECT_DECODE_MAX_CELLS 65536

// An upper bound on the blobs one class can have: every 2 x 2 block of cells holds cells of at most one
// blob (its cells all touch each other), and every blob has a first cell in some block.
#define DETECT_DECODE_MAX_BLOBS(rows, cols) \
  ((((size_t)(rows) + 1u) / 2u) * (((size_t)(cols) + 1u) / 2u))

// Bytes of work buffer for a rows x cols grid, a multiple of 8: per blob three double sums, the peak's
// probability and cell; per cell its blob label and a slot of the flood fill's stack.
#define DETECT_DECODE_WORK_BYTES(rows, cols)                                                   \
  ((DETECT_DECODE_MAX_BLOBS(rows, cols) * (3u * sizeof(double) + sizeof(float) + sizeof(uint16_t)) + \
    (size_t)(rows) * (size_t)(cols) * 2u * sizeof(uint16_t) + 7u) &                           \
   ~(size_t)7u)

// DETECT_DECODE_WORK_BYTES(rows, cols), or 0 for a grid out of range (rows or cols < 1, or more than
// DETECT_DECODE_MAX_CELLS cells).
size_t detect_decode_work_bytes(int rows, int cols);

// Decode an int8 output tensor (rows * cols * channels values, NHWC) with its quantisation parameters.
// Writes at most `max_detections` detections to `out` and returns how many, or a DETECT_DECODE_E* code.
int detect_decode_int8(const int8_t* output, float scale, int32_t zero_point, const detect_grid* grid,
                       void* work, size_t work_bytes, detect_detection* out, int max_detections);

// The same for a float32 output tensor (a float model, or probabilities dequantised elsewhere).
int detect_decode_float(const float* output, const detect_grid* grid, void* work, size_t work_bytes,
                        detect_detection* out, int max_detections);

#ifdef __cplusplus
}
#endif

#endif  // EDGEPIPE_DETECT_DECODE_H_
