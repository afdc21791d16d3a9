// edgepipe MCU harness: runs a TFLite Micro model on inputs streamed from the
// host through semihosting and records outputs and per-inference timer ticks.
//
// Bundle files (on the include path):
//   model_data.h  EDGEPIPE_MODEL_DATA, EDGEPIPE_MODEL_DATA_LEN: the model array and its length
//                 (g_model_data and g_model_data_len unless the bundle names them otherwise)
//   model_ops.h   RegisterModelOps(tflite::MicroMutableOpResolver<N>&),
//                 constexpr unsigned int kModelOpCount
//   model_io.h    constexpr unsigned int kTensorArenaSize (used by arena.cc,
//                 so resizing the arena recompiles only that tiny file)
//
// Host files (relative to the emulator's working directory):
//   inputs.bin    header {"EPI1", record_bytes, count, 0} + count records;
//                 a record is all input tensors' bytes, in input order.
//   outputs.bin   header {"EPO1", record_bytes, count, calib...} then per
//                 record: uint32 ticks + all output tensors' bytes.
//   summary.txt   key=value lines (see write_summary()).
//
// Exit status: 0 ok; 2 model schema mismatch; 3 AllocateTensors failed
// (arena too small); 4 inputs.bin missing/bad; 5 Invoke failed; 6 input
// record size mismatch; 7 output file error; 8 op registration failed;
// 99 fault (startup.c).  Every failure prints one "EDGEPIPE-ERROR ..." line.
#include <stdint.h>
#include <string.h>

#include <new>

#include "model_data.h"
#include "model_ops.h"
#include "semihosting.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" uint32_t edgepipe_stack_used(void);
extern "C" uint32_t edgepipe_stack_size(void);
extern "C" uint32_t edgepipe_heap_used(void);
extern "C" uint32_t edgepipe_heap_size(void);
// arena.cc
extern uint8_t g_arena[];
extern const unsigned int g_arena_size;

#ifndef EDGEPIPE_TIMER_BASE
#define EDGEPIPE_TIMER_BASE 0x40000000u  // CMSDK APB timer0 (mps2)
#endif

namespace {

#ifndef EDGEPIPE_USE_SYSTICK
// ---- CMSDK APB timer: free-running 32-bit down counter --------------------
struct CmsdkTimer {
  volatile uint32_t ctrl, value, reload, intstatus;
};
CmsdkTimer* const kTimer = reinterpret_cast<CmsdkTimer*>(EDGEPIPE_TIMER_BASE);

void timer_start() {
  kTimer->ctrl = 0;
  kTimer->reload = 0xFFFFFFFFu;
  kTimer->value = 0xFFFFFFFFu;
  kTimer->ctrl = 1;  // enable, no interrupt, no external clock
}
inline uint32_t timer_now() { return kTimer->value; }
#else
// ---- SysTick (processor clock), 24 bits extended by counting wraps --------
// For boards whose CMSDK timers are not reachable from the reset security
// state (mps3-an547).  timer_now() returns a DOWN-counting 32-bit value like
// the CMSDK timer, so the callers are identical.
struct SysTickRegs {
  volatile uint32_t ctrl, load, val, calib;
};
SysTickRegs* const kSysTick = reinterpret_cast<SysTickRegs*>(0xE000E010u);
volatile uint32_t g_systick_wraps = 0;
volatile uint32_t* const kIcsr = reinterpret_cast<volatile uint32_t*>(0xE000ED04u);

void timer_start() {
  kSysTick->ctrl = 0;
  kSysTick->load = 0x00FFFFFFu;
  kSysTick->val = 0;
  kSysTick->ctrl = 7;  // enable, interrupt on wrap, CLKSOURCE = processor
  // Writing VAL clears it to 0; the first reload from 0 must not count.
  while (kSysTick->val == 0) {
  }
  kIcsr[0] = 1u << 25;  // PENDSTCLR
  g_systick_wraps = 0;
}
inline uint32_t timer_now() {
  uint32_t w0, v, w1, pending;
  do {
    w0 = g_systick_wraps;
    v = kSysTick->val;
    pending = kIcsr[0] & (1u << 26);  // PENDSTSET: wrapped, handler not run yet
    w1 = g_systick_wraps;
  } while (w0 != w1);
  if (pending && v > 0x00800000u) ++w0;
  const uint32_t up = (w0 << 24) + (0x00FFFFFFu - v);
  return ~up;
}
#endif

// A loop of exactly 2 * n + 1 instructions, timed, so the host can check the
// instructions-per-tick ratio of this board under -icount shift=0.
uint32_t calibrate(uint32_t n) {
  uint32_t t0 = timer_now();
  __asm__ volatile(
      "1: subs %0, %0, #1\n"
      "   bne 1b\n"
      : "+r"(n)
      :
      : "cc");
  return t0 - timer_now();
}
constexpr uint32_t kCalibIterations = 200000;

// ---- tiny text output ------------------------------------------------------
struct Text {
  char buf[1024];
  unsigned len = 0;
  void put(const char* s) {
    while (*s && len + 1 < sizeof(buf)) buf[len++] = *s++;
    buf[len] = 0;
  }
  void put_u(uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
      tmp[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v);
    while (n && len + 1 < sizeof(buf)) buf[len++] = tmp[--n];
    buf[len] = 0;
  }
  void kv(const char* k, uint64_t v) {
    put(k);
    put("=");
    put_u(v);
    put("\n");
  }
};

[[noreturn]] void fail(int code, const char* what, uint32_t a = 0, uint32_t b = 0) {
  Text t;
  t.put("EDGEPIPE-ERROR code=");
  t.put_u(code);
  t.put(" ");
  t.put(what);
  t.put(" a=");
  t.put_u(a);
  t.put(" b=");
  t.put_u(b);
  t.put("\n");
  sh_puts(t.buf);
  sh_exit(code);
}

// ---- static storage (counted in .bss, not on the stack) -------------------
alignas(tflite::MicroMutableOpResolver<kModelOpCount>)
uint8_t g_resolver_buf[sizeof(tflite::MicroMutableOpResolver<kModelOpCount>)];
alignas(tflite::MicroInterpreter)
uint8_t g_interp_buf[sizeof(tflite::MicroInterpreter)];

uint32_t input_bytes(tflite::MicroInterpreter& in) {
  uint32_t n = 0;
  for (size_t i = 0; i < in.inputs_size(); ++i) n += in.input(i)->bytes;
  return n;
}
uint32_t output_bytes(tflite::MicroInterpreter& in) {
  uint32_t n = 0;
  for (size_t i = 0; i < in.outputs_size(); ++i) n += in.output(i)->bytes;
  return n;
}

void write_summary(uint32_t status, uint32_t count, uint64_t sum, uint32_t mn,
                   uint32_t mx, uint32_t arena_used, uint32_t calib_ticks,
                   uint32_t in_bytes, uint32_t out_bytes) {
  Text t;
  t.kv("status", status);
  t.kv("inferences", count);
  t.kv("ticks_sum", sum);
  t.kv("ticks_min", count ? mn : 0);
  t.kv("ticks_max", mx);
  t.kv("calib_instructions", 2ull * kCalibIterations + 1);
  t.kv("calib_ticks", calib_ticks);
  t.kv("arena_size", g_arena_size);
  t.kv("arena_used_bytes", arena_used);
  t.kv("stack_used_bytes", edgepipe_stack_used());
  t.kv("stack_size_bytes", edgepipe_stack_size());
  t.kv("heap_used_bytes", edgepipe_heap_used());
  t.kv("heap_size_bytes", edgepipe_heap_size());
  t.kv("input_record_bytes", in_bytes);
  t.kv("output_record_bytes", out_bytes);
  t.kv("model_bytes", EDGEPIPE_MODEL_DATA_LEN);
  int fd = sh_open("summary.txt", SH_MODE_WB);
  if (fd < 0) fail(7, "cannot-open-summary.txt");
  if (sh_write(fd, t.buf, t.len) != 0) fail(7, "cannot-write-summary.txt");
  sh_close(fd);
}

}  // namespace

// No heap in this program: operator delete is referenced by virtual
// destructors only and never called.
void operator delete(void*) noexcept {}
void operator delete(void*, unsigned int) noexcept {}
extern "C" void __cxa_pure_virtual() { fail(9, "pure-virtual-call"); }
extern "C" int __aeabi_atexit(void*, void (*)(void*), void*) { return 0; }

#ifdef EDGEPIPE_USE_SYSTICK
extern "C" void SysTick_Handler(void) { g_systick_wraps = g_systick_wraps + 1; }
#endif

int main() {
#ifdef EDGEPIPE_SELFTEST_FAULT
  __asm__ volatile("udf #0");  // test of the fault path: UsageFault -> HardFault
#endif
  timer_start();
  const uint32_t calib_ticks = calibrate(kCalibIterations);

  const tflite::Model* model = tflite::GetModel(EDGEPIPE_MODEL_DATA);
  if (model->version() != TFLITE_SCHEMA_VERSION)
    fail(2, "model-schema-version", model->version(), TFLITE_SCHEMA_VERSION);

  auto* resolver = new (g_resolver_buf) tflite::MicroMutableOpResolver<kModelOpCount>();
  if (RegisterModelOps(*resolver) != kTfLiteOk) fail(8, "op-registration");

  auto* interp = new (g_interp_buf)
      tflite::MicroInterpreter(model, *resolver, g_arena, g_arena_size);
  if (interp->AllocateTensors() != kTfLiteOk) {
    write_summary(3, 0, 0, 0, 0, 0, calib_ticks, 0, 0);
    fail(3, "allocate-tensors-failed(arena-too-small?)", g_arena_size);
  }
  const uint32_t arena_used = static_cast<uint32_t>(interp->arena_used_bytes());
  const uint32_t in_bytes = input_bytes(*interp);
  const uint32_t out_bytes = output_bytes(*interp);

  int in_fd = sh_open("inputs.bin", SH_MODE_RB);
  if (in_fd < 0) fail(4, "cannot-open-inputs.bin");
  uint32_t hdr[4];
  if (sh_read(in_fd, hdr, sizeof(hdr)) != 0 || memcmp(hdr, "EPI1", 4) != 0)
    fail(4, "bad-inputs.bin-header");
  const uint32_t count = hdr[2];
  if (count != 0 && hdr[1] != in_bytes)
    fail(6, "input-record-size-mismatch", hdr[1], in_bytes);

  int out_fd = sh_open("outputs.bin", SH_MODE_WB);
  if (out_fd < 0) fail(7, "cannot-open-outputs.bin");
  uint32_t ohdr[4] = {0, out_bytes, count, calib_ticks};
  memcpy(ohdr, "EPO1", 4);
  if (sh_write(out_fd, ohdr, sizeof(ohdr)) != 0) fail(7, "cannot-write-outputs.bin");

  uint64_t sum = 0;
  uint32_t mn = 0xFFFFFFFFu, mx = 0;
  for (uint32_t r = 0; r < count; ++r) {
    // Read the record straight into the input tensors (no staging buffer).
    for (size_t i = 0; i < interp->inputs_size(); ++i) {
      TfLiteTensor* t = interp->input(i);
      if (sh_read(in_fd, t->data.raw, t->bytes) != 0) fail(4, "short-inputs.bin", r);
    }
    const uint32_t t0 = timer_now();
    const TfLiteStatus st = interp->Invoke();
    const uint32_t t1 = timer_now();
    if (st != kTfLiteOk) fail(5, "invoke-failed", r);
    const uint32_t ticks = t0 - t1;  // down counter
    sum += ticks;
    if (ticks < mn) mn = ticks;
    if (ticks > mx) mx = ticks;
    if (sh_write(out_fd, &ticks, 4) != 0) fail(7, "cannot-write-outputs.bin", r);
    for (size_t i = 0; i < interp->outputs_size(); ++i) {
      const TfLiteTensor* t = interp->output(i);
      if (sh_write(out_fd, t->data.raw, t->bytes) != 0)
        fail(7, "cannot-write-outputs.bin", r);
    }
  }
  sh_close(out_fd);
  sh_close(in_fd);
  write_summary(0, count, sum, mn, mx, arena_used, calib_ticks, in_bytes, out_bytes);
  sh_puts("EDGEPIPE-DONE\n");
  return 0;
}
