/* bcryptprimitives.dll for Wine 8, which lacks it: Rust's standard
 * library (1.78+) imports ProcessPrng from it for its random seeds, so
 * without this no Rust program starts under that Wine. ProcessPrng fills
 * the buffer from RtlGenRandom (advapi32's SystemFunction036), the same
 * system generator. Built by scripts/cross-test with mingw-w64 and put in
 * the test prefix's system32; never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
