/* mcu_test firmware: runs the generated model on every image of inputs.bin (float32, NCHW,
   SBNN_INPUT_SIZE floats each) and writes the outputs to logits.bin, over semihosting. */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

uint32_t stack_used(void);


/* SysTick on the processor clock. Under qemu -icount shift=0 every instruction advances the
   virtual clock by 1 ns, and the MPS2 processor clock is 25 MHz: one tick = 40 instructions. */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static float x[SBNN_INPUT_SIZE], y[SBNN_OUTPUT_SIZE];
/* odd images run in this caller-owned arena (sbnn_run_arena), even ones in the static one */
static float arena[SBNN_ARENA_BYTES / 4];

/* per-layer ticks: main.c and model.c are built with -DSBNN_PROFILE */
#define MAX_NODES 512
static uint32_t node_ticks[MAX_NODES], last_tick;
void sbnn_profile(int node)
{
    const uint32_t now = SYST_CVR;
    if (node >= 0 && node < MAX_NODES)
        node_ticks[node] += (last_tick - now) & 0xFFFFFFu;
    last_tick = now;
}

int main(void)
{
    uint32_t n = 0, before, ticks = 0, t0, calib;
    int fi = sh_open("inputs.bin", 1), fo = sh_open("logits.bin", 5);
    if (fi < 0 || fo < 0) {
        sh_puts("mcu: cannot open inputs.bin / logits.bin\n");
        return 2;
    }
    if (sbnn_run_arena(x, y, (char *)arena + 2) != -2 || sbnn_run_arena(x, y, 0) != -1) {
        sh_puts("mcu: sbnn_run_arena took a misaligned or NULL arena\n");
        return 6;
    }
    before = stack_used();
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u; /* enable, processor clock, no interrupt */
    {   /* calibration: 2,000,000 instructions (subs + bne, 10^6 times) */
        uint32_t k = 1000000u, c0 = SYST_CVR;
        __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(k));
        calib = (c0 - SYST_CVR) & 0xFFFFFFu;
    }
    for (;;) {
        int left = sh_read(fi, x, (int)sizeof x);
        if (left == (int)sizeof x)
            break; /* end of file */
        if (left != 0) {
            sh_puts("mcu: inputs.bin is not a whole number of images\n");
            return 3;
        }
        t0 = SYST_CVR;
        last_tick = t0;
        if ((n & 1u ? sbnn_run_arena(x, y, arena) : sbnn_run(x, y)) != 0) {
            sh_puts("mcu: sbnn_run failed\n");
            return 4;
        }
        ticks += (t0 - SYST_CVR) & 0xFFFFFFu; /* counts down; one run is < 2^24 ticks */
        if (sh_write(fo, y, (int)sizeof y) != 0) {
            sh_puts("mcu: write failed\n");
            return 5;
        }
        ++n;
    }
    sh_close(fi);
    sh_close(fo);
    sh_puts("mcu: images ");
    sh_putu(n);
    sh_puts(" stack_bytes ");
    sh_putu(stack_used());
    sh_puts(" stack_bytes_before_model ");
    sh_putu(before);
    sh_puts(" systick_ticks ");
    sh_putu(ticks);
    sh_puts(" calib_ticks_per_2M_insns ");
    sh_putu(calib);
    sh_puts("\n");
    for (t0 = 0; t0 < MAX_NODES; ++t0) {
        if (node_ticks[t0]) {
            sh_puts("mcu: node ");
            sh_putu(t0);
            sh_puts(" ticks ");
            sh_putu(node_ticks[t0]);
            sh_puts("\n");
        }
    }
    return n ? 0 : 6;
}
