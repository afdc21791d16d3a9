// Runs detect_decode.c on output tensors compiled in, and prints every detection's raw float bits, so a
// host can compare them exactly with edgepipe's Python decoding (edgepipe/targets/mcu/detect_decode.py
// generates the cases and reads the lines).
//
// The same file builds for the emulated board (output over semihosting, startup.c's exit code) and for
// the host (stdout), so a quick host run and the board run check one program.
//
// Output, one line each:
//   api ok                            the argument checks behave as documented
//   case <i> <n>                      case i returned n (a detection count, or a negative error)
//   det <8 hex words>                 one detection's fields, as IEEE-754 bit patterns, n lines
//   EDGEPIPE-DONE                     all cases ran
// A failed self-check prints "EDGEPIPE-ERROR <what>" and exits 2.
#include <stdint.h>
#include <string.h>

#include "detect_decode.h"

#if defined(__arm__)
#include "semihosting.h"
static void put(const char* s) { sh_puts(s); }
#else
#include <stdio.h>
static void put(const char* s) { fputs(s, stdout); }
#endif

// One output tensor to decode. Floats are given as their bits, so every value (NaN payloads included)
// reaches the decoder exactly.
typedef struct check_case {
  const int8_t* q;         // int8 tensor, or NULL
  const uint32_t* f;       // float32 tensor's bits, or NULL
  uint32_t scale_bits;     // int8 only
  int32_t zero_point;      // int8 only
  int rows, cols, classes, has_size, stride;
  uint32_t threshold_bits;
  int max_detections;
} check_case;

// Generated: kCases[], CHECK_CASE_COUNT, CHECK_MAX_VALUES (the largest float tensor), CHECK_MAX_ROWS,
// CHECK_MAX_COLS, CHECK_MAX_DETECTIONS.
#include "detect_decode_cases.inc"

// A detection is 8 floats with no padding: its bits are printed from its bytes.
typedef char check_detection_is_8_floats[sizeof(detect_detection) == 8 * sizeof(float) ? 1 : -1];

#define CHECK_WORK_BYTES DETECT_DECODE_WORK_BYTES(CHECK_MAX_ROWS, CHECK_MAX_COLS)
#define PAINT 0xA5u

static double g_work[CHECK_WORK_BYTES / sizeof(double)];
static float g_values[CHECK_MAX_VALUES];
// One slot more than any cap: it must stay painted.
static detect_detection g_dets[CHECK_MAX_DETECTIONS + 1];

static float from_bits(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static char* put_hex(char* p, uint32_t v) {
  static const char kHex[] = "0123456789abcdef";
  for (int i = 0; i < 8; ++i) *p++ = kHex[(v >> (28 - 4 * i)) & 0xFu];
  return p;
}

static char* put_int(char* p, long v) {
  char digits[24];
  int n = 0;
  unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
  if (v < 0) *p++ = '-';
  do {
    digits[n++] = (char)('0' + u % 10u);
    u /= 10u;
  } while (u != 0);
  while (n > 0) *p++ = digits[--n];
  return p;
}

static char* put_str(char* p, const char* s) {
  while (*s) *p++ = *s++;
  return p;
}

static int fail(const char* what, long index) {
  char line[96];
  char* p = put_str(line, "EDGEPIPE-ERROR ");
  p = put_str(p, what);
  *p++ = ' ';
  p = put_int(p, index);
  *p++ = '\n';
  *p = 0;
  put(line);
  return 2;
}

static int painted(const void* at, size_t bytes) {
  const unsigned char* b = (const unsigned char*)at;
  for (size_t i = 0; i < bytes; ++i)
    if (b[i] != PAINT) return 0;
  return 1;
}

// The documented argument checks, on a 3 x 3 grid with one class.
static int check_api(void) {
  static const int8_t q[3 * 3 * 2] = {0};
  detect_grid g = {3, 3, 1, 0, 8, 0.5f};
  const size_t need = detect_decode_work_bytes(3, 3);
  unsigned char* work = (unsigned char*)g_work;
  if (need != DETECT_DECODE_WORK_BYTES(3, 3) || need % 8u != 0) return fail("work_bytes", 0);
  if (DETECT_DECODE_WORK_BYTES(12, 12) != 1656u) return fail("the header's 12 x 12 figure", 0);
  if (detect_decode_work_bytes(0, 3) != 0 || detect_decode_work_bytes(3, -1) != 0 ||
      detect_decode_work_bytes(257, 256) != 0 || detect_decode_work_bytes(256, 256) == 0)
    return fail("work_bytes range", 0);
  if (detect_decode_int8(q, 1.0f, 0, &g, work, need - 1u, g_dets, 1) != DETECT_DECODE_EWORK)
    return fail("small work", 0);
  if (detect_decode_int8(q, 1.0f, 0, &g, work + 4, need, g_dets, 1) != DETECT_DECODE_EWORK)
    return fail("misaligned work", 0);
  if (detect_decode_int8(NULL, 1.0f, 0, &g, work, need, g_dets, 1) != DETECT_DECODE_EINVAL ||
      detect_decode_float(NULL, &g, work, need, g_dets, 1) != DETECT_DECODE_EINVAL ||
      detect_decode_int8(q, 1.0f, 0, NULL, work, need, g_dets, 1) != DETECT_DECODE_EINVAL ||
      detect_decode_int8(q, 1.0f, 0, &g, NULL, need, g_dets, 1) != DETECT_DECODE_EINVAL ||
      detect_decode_int8(q, 1.0f, 0, &g, work, need, NULL, 1) != DETECT_DECODE_EINVAL ||
      detect_decode_int8(q, 1.0f, 0, &g, work, need, g_dets, -1) != DETECT_DECODE_EINVAL)
    return fail("null or negative", 0);
  const detect_grid bad[] = {{0, 3, 1, 0, 8, 0.5f}, {3, 0, 1, 0, 8, 0.5f}, {3, 3, 0, 0, 8, 0.5f},
                             {3, 3, 1, 2, 8, 0.5f}, {3, 3, 1, 0, 0, 0.5f}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i)
    if (detect_decode_int8(q, 1.0f, 0, &bad[i], work, need, g_dets, 1) != DETECT_DECODE_EINVAL)
      return fail("bad grid", (long)i);
  if (detect_decode_int8(q, 1.0f, 0, &g, work, need, g_dets, 0) != 0) return fail("zero cap", 0);
  put("api ok\n");
  return 0;
}

int main(void) {
  int status = check_api();
  if (status != 0) return status;
  for (int c = 0; c < CHECK_CASE_COUNT; ++c) {
    const check_case* k = &kCases[c];
    const detect_grid g = {k->rows, k->cols, k->classes, k->has_size, k->stride, from_bits(k->threshold_bits)};
    // The work area ends where the buffer ends, and the rest is painted: a write past its documented
    // size either leaves the array (caught by the host's address sanitizer) or spoils the paint.
    const size_t need = detect_decode_work_bytes(k->rows, k->cols);
    if (need == 0 || need > sizeof g_work) return fail("work buffer", c);
    unsigned char* work = (unsigned char*)g_work + (sizeof g_work - need);
    memset(g_work, PAINT, sizeof g_work);
    memset(g_dets, PAINT, sizeof g_dets);
    int n;
    if (k->q != NULL) {
      n = detect_decode_int8(k->q, from_bits(k->scale_bits), k->zero_point, &g, work, need, g_dets,
                             k->max_detections);
    } else {
      const size_t values = (size_t)k->rows * (size_t)k->cols * (size_t)(k->classes + 1 + 2 * k->has_size);
      memcpy(g_values, k->f, values * sizeof(float));
      n = detect_decode_float(g_values, &g, work, need, g_dets, k->max_detections);
    }
    if (!painted(g_work, sizeof g_work - need)) return fail("wrote below the work buffer in case", c);
    if (k->max_detections >= 0 &&
        !painted(&g_dets[k->max_detections], sizeof g_dets - (size_t)k->max_detections * sizeof g_dets[0]))
      return fail("wrote past max_detections in case", c);
    char line[8 * 9 + 8];
    char* p = put_str(line, "case ");
    p = put_int(p, c);
    *p++ = ' ';
    p = put_int(p, n);
    *p++ = '\n';
    *p = 0;
    put(line);
    for (int d = 0; d < n; ++d) {
      uint32_t bits[8];
      memcpy(bits, &g_dets[d], sizeof bits);
      p = put_str(line, "det");
      for (int j = 0; j < 8; ++j) {
        *p++ = ' ';
        p = put_hex(p, bits[j]);
      }
      *p++ = '\n';
      *p = 0;
      put(line);
    }
  }
  put("EDGEPIPE-DONE\n");
  return 0;
}
