/* mcu_test firmware: runs the generated model on every image of inputs.bin (float32, NCHW,
   SBNN_INPUT_SIZE floats each) and writes the outputs to logits.bin, over semihosting. */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

uint32_t stack_used(void);

static float x[SBNN_INPUT_SIZE], y[SBNN_OUTPUT_SIZE];

int main(void)
{
    uint32_t n = 0, before;
    int fi = sh_open("inputs.bin", 1), fo = sh_open("logits.bin", 5);
    if (fi < 0 || fo < 0) {
        sh_puts("mcu: cannot open inputs.bin / logits.bin\n");
        return 2;
    }
    before = stack_used();
    for (;;) {
        int left = sh_read(fi, x, (int)sizeof x);
        if (left == (int)sizeof x)
            break; /* end of file */
        if (left != 0) {
            sh_puts("mcu: inputs.bin is not a whole number of images\n");
            return 3;
        }
        if (sbnn_run(x, y) != 0) {
            sh_puts("mcu: sbnn_run failed\n");
            return 4;
        }
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
    sh_puts("\n");
    return n ? 0 : 6;
}
