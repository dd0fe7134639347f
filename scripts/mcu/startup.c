/* Minimal Cortex-M4F startup for the mcu_test firmware: vector table, .data/.bss set-up, FPU on,
   stack painted (so main can measure the deepest stack use), then main. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _sstack[], _estack[];
int main(void);

#define STACK_PAINT 0xA5A5A5A5u

void Reset_Handler(void);
void Fault_Handler(void);

__attribute__((section(".vectors"), used)) const uint32_t sbnn_vectors[16] = {
    (uint32_t)_estack,
    (uint32_t)Reset_Handler,
    (uint32_t)Fault_Handler, /* NMI */
    (uint32_t)Fault_Handler, /* HardFault */
    (uint32_t)Fault_Handler, /* MemManage */
    (uint32_t)Fault_Handler, /* BusFault */
    (uint32_t)Fault_Handler, /* UsageFault */
    0, 0, 0, 0,
    (uint32_t)Fault_Handler, /* SVCall */
    (uint32_t)Fault_Handler, /* DebugMon */
    0,
    (uint32_t)Fault_Handler, /* PendSV */
    (uint32_t)Fault_Handler, /* SysTick */
};

void Fault_Handler(void)
{
    sh_puts("mcu: fault\n");
    sh_exit(70);
}

/* bytes of stack used so far: the painted words that were overwritten */
uint32_t stack_used(void)
{
    const uint32_t *p = _sstack;
    while (p < _estack && *p == STACK_PAINT)
        ++p;
    return (uint32_t)((const char *)_estack - (const char *)p);
}

void Reset_Handler(void)
{
    uint32_t *src = _sidata, *dst = _sdata, *p, sp;
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= 0xFu << 20; /* CP10, CP11: full access to the FPU */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    while (dst < _edata)
        *dst++ = *src++;
    for (dst = _sbss; dst < _ebss; ++dst)
        *dst = 0;
    /* paint the stack up to 16 bytes under this function's frame */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = _sstack; p < (uint32_t *)sp - 4; ++p)
        *p = STACK_PAINT;
    sh_exit(main());
}
