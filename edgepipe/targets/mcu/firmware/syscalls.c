// newlib system-call stubs for the edgepipe MCU harness.
//
// The harness itself uses raw semihosting (semihosting.h), not stdio.  These
// stubs exist so that a libc function pulled in by a kernel (abort, malloc)
// links without librdimon/libnosys, and so that heap use can be measured:
// _sbrk records the highest break ever handed out.
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>

#include "semihosting.h"

extern char __heap_start__, __heap_end__;
static char* g_brk = &__heap_start__;
static char* g_brk_max = &__heap_start__;

uint32_t edgepipe_heap_used(void) { return (uint32_t)(g_brk_max - &__heap_start__); }
uint32_t edgepipe_heap_size(void) { return (uint32_t)(&__heap_end__ - &__heap_start__); }

void* _sbrk(ptrdiff_t incr) {
  char* prev = g_brk;
  if (g_brk + incr > &__heap_end__ || g_brk + incr < &__heap_start__) {
    errno = ENOMEM;
    return (void*)-1;
  }
  g_brk += incr;
  if (g_brk > g_brk_max) g_brk_max = g_brk;
  return prev;
}

void _exit(int code) { sh_exit(code); }
int _kill(int pid, int sig) { (void)pid; (void)sig; sh_puts("EDGEPIPE-ABORT\n"); sh_exit(98); }
int _getpid(void) { return 1; }
int _write(int fd, const char* buf, int len) { (void)fd; (void)buf; return len; }
int _read(int fd, char* buf, int len) { (void)fd; (void)buf; (void)len; return 0; }
int _close(int fd) { (void)fd; return -1; }
int _lseek(int fd, int off, int whence) { (void)fd; (void)off; (void)whence; return 0; }
int _isatty(int fd) { (void)fd; return 1; }
int _fstat(int fd, struct stat* st) { (void)fd; st->st_mode = S_IFCHR; return 0; }
