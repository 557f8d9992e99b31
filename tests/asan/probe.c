/* A deliberate defect of each kind the sanitized integration run looks for, built with
 * the same sanitizer flags as the module and workerd: tests/asan/run_sanitized.py runs
 * it first to prove that a report is written where it looks and that it is caught.
 *
 *   probe heap-overflow     reads one byte past a heap block (AddressSanitizer)
 *   probe signed-overflow   INT_MAX + 1 (UndefinedBehaviorSanitizer, "runtime error")
 *   probe leak              loses a heap block before exit (LeakSanitizer)
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *kind = argc > 1 ? argv[1] : "";
    /* volatile: the compiler may not prove the defects away */
    if (strcmp(kind, "heap-overflow") == 0) {
        volatile size_t n = 16;
        char *block = malloc(n);
        memset(block, 'x', n);
        volatile char past = block[n];
        free(block);
        return past == 'x';
    }
    if (strcmp(kind, "signed-overflow") == 0) {
        volatile int big = INT_MAX;
        volatile int sum = big + 1;
        return sum == 0;
    }
    if (strcmp(kind, "leak") == 0) {
        void *volatile lost = malloc(64);
        memset(lost, 0, 64);
        lost = NULL;
        return 0;
    }
    fprintf(stderr, "usage: probe heap-overflow|signed-overflow|leak\n");
    return 2;
}
