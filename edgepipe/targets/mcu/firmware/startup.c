// Bare-metal startup for the edgepipe MCU harness (Cortex-M4F/M7F/M55).
//
// * Vector table in section .vectors (placed at the reset vector address by
//   the linker script).
// * Reset_Handler (naked, no stack use) enables the FPU in CPACR before any
//   compiler-generated VFP code can run, then calls reset_c().
// * reset_c() copies .data, zeroes .bss, paints the unused stack with a
//   pattern (for the high-water mark), runs the C++ constructors and main(),
//   and exits through semihosting with main's return value.
// * Every fault handler prints ONE line (fault name, stacked PC, CFSR, HFSR)
//   and exits with status 99.
#include <stdint.h>
#include <string.h>

#include "semihosting.h"

extern uint32_t __data_load__, __data_start__, __data_end__;
extern uint32_t __bss_start__, __bss_end__;
extern uint32_t __stack_limit__, __stack_top__;
extern int main(void);
extern void __libc_init_array(void);

#define STACK_PAINT 0xC5C5C5C5u

// Used by newlib's __libc_init_array / atexit machinery with -nostartfiles.
void _init(void) {}
void _fini(void) {}
void* __dso_handle = 0;

// ---- semihosting ----------------------------------------------------------
int sh_open(const char* path, int mode) {
  uint32_t block[3] = {(uint32_t)path, (uint32_t)mode, (uint32_t)strlen(path)};
  return sh_call(SH_SYS_OPEN, block);
}
int sh_close(int fd) {
  uint32_t block[1] = {(uint32_t)fd};
  return sh_call(SH_SYS_CLOSE, block);
}
int sh_read(int fd, void* buf, uint32_t len) {
  uint32_t block[3] = {(uint32_t)fd, (uint32_t)buf, len};
  return sh_call(SH_SYS_READ, block);
}
int sh_write(int fd, const void* buf, uint32_t len) {
  uint32_t block[3] = {(uint32_t)fd, (uint32_t)buf, len};
  return sh_call(SH_SYS_WRITE, block);
}
void sh_puts(const char* s) { sh_call(SH_SYS_WRITE0, s); }
void sh_exit(int code) {
  // ADP_Stopped_ApplicationExit with an exit code (SYS_EXIT_EXTENDED).
  uint32_t block[2] = {0x20026u, (uint32_t)code};
  for (;;) sh_call(SH_SYS_EXIT_EXTENDED, block);
}

// ---- stack high-water mark ----------------------------------------------
uint32_t edgepipe_stack_size(void) {
  return (uint32_t)((uintptr_t)&__stack_top__ - (uintptr_t)&__stack_limit__);
}
uint32_t edgepipe_stack_used(void) {
  const uint32_t* p = &__stack_limit__;
  while (p < &__stack_top__ && *p == STACK_PAINT) ++p;
  return (uint32_t)((uintptr_t)&__stack_top__ - (uintptr_t)p);
}

// ---- reset ----------------------------------------------------------------
__attribute__((used, noreturn)) void reset_c(void) {
  uint32_t* src = &__data_load__;
  for (uint32_t* dst = &__data_start__; dst < &__data_end__;) *dst++ = *src++;
  for (uint32_t* dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
  // Paint from the stack limit up to a little below the current SP.
  uint32_t sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t* p = &__stack_limit__; (uint32_t)p < sp - 64u; ++p) *p = STACK_PAINT;
  __libc_init_array();
  sh_exit(main());
}

__attribute__((naked, noreturn)) void Reset_Handler(void) {
  __asm__ volatile(
      "ldr r0, =__stack_top__\n"
      "mov sp, r0\n"
      // CPACR (0xE000ED88): full access to CP10/CP11 (the FPU).
      "ldr r0, =0xE000ED88\n"
      "ldr r1, [r0]\n"
      "orr r1, r1, #(0xF << 20)\n"
      "str r1, [r0]\n"
      "dsb\n"
      "isb\n"
      "b reset_c\n");
}

// ---- faults ---------------------------------------------------------------
static void put_hex(char* out, uint32_t v) {
  static const char kHex[] = "0123456789abcdef";
  out[0] = '0';
  out[1] = 'x';
  for (int i = 0; i < 8; ++i) out[2 + i] = kHex[(v >> (28 - 4 * i)) & 0xF];
}

__attribute__((used, noreturn)) void fault_c(uint32_t* frame, uint32_t ipsr) {
  static const char* const kNames[] = {"Thread", "Reset", "NMI", "HardFault",
                                       "MemManage", "BusFault", "UsageFault",
                                       "SecureFault"};
  const char* name = ipsr < 8 ? kNames[ipsr] : "Interrupt";
  volatile uint32_t* scb = (volatile uint32_t*)0xE000ED28;  // CFSR
  char line[96];
  char* p = line;
  const char* prefix = "EDGEPIPE-FAULT ";
  while (*prefix) *p++ = *prefix++;
  while (*name) *p++ = *name++;
  const char* f1 = " pc=";
  while (*f1) *p++ = *f1++;
  put_hex(p, frame[6]);
  p += 10;
  const char* f2 = " cfsr=";
  while (*f2) *p++ = *f2++;
  put_hex(p, scb[0]);
  p += 10;
  const char* f3 = " hfsr=";
  while (*f3) *p++ = *f3++;
  put_hex(p, scb[1]);
  p += 10;
  *p++ = '\n';
  *p = 0;
  sh_puts(line);
  sh_exit(99);
}

__attribute__((naked, noreturn)) void Fault_Handler(void) {
  __asm__ volatile(
      "tst lr, #4\n"
      "ite eq\n"
      "mrseq r0, msp\n"
      "mrsne r0, psp\n"
      "mrs r1, ipsr\n"
      "b fault_c\n");
}

// ---- vector table ---------------------------------------------------------
// The harness defines SysTick_Handler when it times with SysTick; otherwise a
// SysTick interrupt is unexpected and reported as a fault.
void SysTick_Handler(void) __attribute__((weak, alias("Fault_Handler")));
typedef void (*vector_t)(void);
__attribute__((section(".vectors"), used)) const vector_t g_vectors[48] = {
    (vector_t)&__stack_top__,  // initial SP
    Reset_Handler,
    Fault_Handler,  // NMI
    Fault_Handler,  // HardFault
    Fault_Handler,  // MemManage
    Fault_Handler,  // BusFault
    Fault_Handler,  // UsageFault
    Fault_Handler,  // SecureFault (v8-M)
    0, 0, 0,
    Fault_Handler,  // SVC
    Fault_Handler,  // DebugMon
    0,
    Fault_Handler,  // PendSV
    SysTick_Handler,
    // 32 external interrupts: none are enabled; any that fires is a fault.
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler,
};
