// edgepipe's on-board check of a detection bundle: runs main.cc's detect() (the model, then
// detect_decode.c on its output, with model_io.h's grid facts) on every input of inputs.bin and writes what
// it found to detections.bin, for check_detections.py to compare, bit for bit, with edgepipe's Python
// decoding of the same output tensors (sample_detections.bin).
//
// Host files (relative to the emulator's working directory):
//   inputs.bin      as harness.cc reads it: {"EPI1", record_bytes, count, 0} + count records
//   detections.bin  {"EPD1", count, 0, 0}, then per input: int32 n, then n detections of 8 floats
//                   (detect_detection: class, score, cx, cy, x0, y0, x1, y1)
//
// Exit status: 0 ok; 4 inputs.bin missing or bad; 5 detect() failed; 7 output file error. Every failure
// prints one "EDGEPIPE-ERROR ..." line.
#include <stdint.h>
#include <string.h>

#include "detect_decode.h"
#include "model_io.h"
#include "semihosting.h"

int detect(const ModelInputType* input, detect_detection* found);  // main.cc

namespace {

constexpr uint32_t InputElements() {
  uint32_t n = 1;
  for (int d : kInputDims) n *= static_cast<uint32_t>(d);
  return n;
}

alignas(16) ModelInputType g_input[InputElements()];
detect_detection g_found[kDetectMaxDetections];

[[noreturn]] void fail(int code, const char* what) {
  sh_puts("EDGEPIPE-ERROR ");
  sh_puts(what);
  sh_puts("\n");
  sh_exit(code);
}

}  // namespace

int main() {
  const int in_fd = sh_open("inputs.bin", SH_MODE_RB);
  if (in_fd < 0) fail(4, "cannot-open-inputs.bin");
  uint32_t hdr[4];
  if (sh_read(in_fd, hdr, sizeof(hdr)) != 0 || memcmp(hdr, "EPI1", 4) != 0) fail(4, "bad-inputs.bin-header");
  const uint32_t count = hdr[2];
  if (count != 0 && hdr[1] != sizeof(g_input)) fail(4, "input-record-size-mismatch");

  const int out_fd = sh_open("detections.bin", SH_MODE_WB);
  if (out_fd < 0) fail(7, "cannot-open-detections.bin");
  uint32_t ohdr[4] = {0, count, 0, 0};
  memcpy(ohdr, "EPD1", 4);
  if (sh_write(out_fd, ohdr, sizeof(ohdr)) != 0) fail(7, "cannot-write-detections.bin");

  for (uint32_t r = 0; r < count; ++r) {
    if (sh_read(in_fd, g_input, sizeof(g_input)) != 0) fail(4, "short-inputs.bin");
    const int32_t n = detect(g_input, g_found);
    if (n < 0) fail(5, "detect-failed");
    if (sh_write(out_fd, &n, sizeof(n)) != 0) fail(7, "cannot-write-detections.bin");
    if (n > 0 && sh_write(out_fd, g_found, static_cast<uint32_t>(n) * sizeof(g_found[0])) != 0)
      fail(7, "cannot-write-detections.bin");
  }
  sh_close(out_fd);
  sh_close(in_fd);
  sh_puts("EDGEPIPE-DONE\n");
  return 0;
}
