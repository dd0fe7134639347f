/* ARM semihosting (bkpt 0xAB) for the test firmware: qemu's -semihosting gives the program
   the host's files and stdout and its exit status. Only what mcu_test needs. */
#ifndef SBNN_SEMIHOST_H
#define SBNN_SEMIHOST_H

#include <stdint.h>

static inline int sh_call(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static inline int sh_strlen(const char *s)
{
    int n = 0;
    while (s[n])
        ++n;
    return n;
}

/* mode 1: "rb", 5: "wb" */
static inline int sh_open(const char *name, int mode)
{
    uint32_t a[3] = {(uint32_t)name, (uint32_t)mode, (uint32_t)sh_strlen(name)};
    return sh_call(0x01, a);
}

/* returns the number of bytes NOT read (0: all of them) */
static inline int sh_read(int fd, void *buf, int len)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)buf, (uint32_t)len};
    return sh_call(0x06, a);
}

static inline int sh_write(int fd, const void *buf, int len)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)buf, (uint32_t)len};
    return sh_call(0x05, a);
}

static inline int sh_close(int fd)
{
    uint32_t a[1] = {(uint32_t)fd};
    return sh_call(0x02, a);
}

static inline void sh_puts(const char *s)
{
    sh_call(0x04, s); /* SYS_WRITE0 */
}

static inline void sh_putu(uint32_t v)
{
    char buf[12];
    int i = 11;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    sh_puts(buf + i);
}

/* SYS_EXIT_EXTENDED: qemu exits with `code` */
static inline void sh_exit(int code) __attribute__((noreturn));
static inline void sh_exit(int code)
{
    uint32_t a[2] = {0x20026u, (uint32_t)code}; /* ADP_Stopped_ApplicationExit */
    for (;;)
        sh_call(0x20, a);
}

#endif
