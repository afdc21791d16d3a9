// Minimal ARM semihosting (bkpt 0xAB) for the edgepipe MCU harness.
// Only what the harness needs: open/read/write/close a host file, print a
// string on the debug console, and exit with a status code.  No newlib stdio
// and no librdimon, so the harness adds little to the linked image.
#ifndef EDGEPIPE_SEMIHOSTING_H_
#define EDGEPIPE_SEMIHOSTING_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SH_SYS_OPEN = 0x01,
  SH_SYS_CLOSE = 0x02,
  SH_SYS_WRITE0 = 0x04,
  SH_SYS_WRITE = 0x05,
  SH_SYS_READ = 0x06,
  SH_SYS_FLEN = 0x0C,
  SH_SYS_EXIT_EXTENDED = 0x20,
};

// Open modes of SYS_OPEN (the ISO C fopen modes, in this order).
enum { SH_MODE_RB = 1, SH_MODE_WB = 5 };

static inline int sh_call(int op, const void* arg) {
  register int r0 __asm__("r0") = op;
  register const void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

// Returns a host handle (>= 0) or -1.
int sh_open(const char* path, int mode);
int sh_close(int fd);
// Returns the number of bytes NOT read / written (0 = complete).
int sh_read(int fd, void* buf, uint32_t len);
int sh_write(int fd, const void* buf, uint32_t len);
void sh_puts(const char* s);
__attribute__((noreturn)) void sh_exit(int code);

#ifdef __cplusplus
}
#endif

#endif  // EDGEPIPE_SEMIHOSTING_H_
