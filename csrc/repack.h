/* Load-time weight repacking: Q4_K rows interleaved in groups of 8,
 * and a matmul over that layout whose every output is bit-identical to the AVX2 unit's
 * Q4_K vec_dot (and so to its vec_dot_n and to sm_matmul_q on a table whose Q4_K entries
 * come from the avx2 unit).  The model keeps such a copy of each Q4_K layer matrix where the
 * table takes Q4_K's dot kernels from the avx2 unit (model.c), and sm_matmul_team reads it
 * while they still do (matmul.c); scripts/bench_repack.py measures the kernel alone.
 *
 * block_q4_Kx8: one 256-weight super-block of 8 rows.  Each row's 8 six-bit scales and
 * mins are unpacked at repack time; the quants are regrouped so that one 32-byte load
 * holds the same 4 packed bytes (8 weights) of all 8 rows:
 *   d[r], dmin[r]            fp16 super-block scales of row r
 *   scales[c][r]             6-bit scale of sub-block c (32 weights) of row r
 *   mins[m][r][h]            6-bit min of sub-block 2m + h of row r (pairs, as madd reads them)
 *   qs[l][k][r][b]           byte 32k + 4l + b of row r's qs (b < 4): low nibbles are weights
 *                            64k + 4l + b, high nibbles weights 64k + 32 + 4l + b
 * 1184 bytes for 8 x 144 (2.8% more).  Rows past the end of the matrix are zero. */
#ifndef SMALLMIND_REPACK_H
#define SMALLMIND_REPACK_H

#include <stdint.h>

#include "quants.h"

#define SM_REPACK_ROWS 8

typedef struct {
    sm_half d[SM_REPACK_ROWS];
    sm_half dmin[SM_REPACK_ROWS];
    uint8_t scales[QK_K / 32][SM_REPACK_ROWS];
    uint8_t mins[QK_K / 64][SM_REPACK_ROWS][2];
    uint8_t qs[8][4][SM_REPACK_ROWS][4];
} block_q4_Kx8;
static_assert(sizeof(block_q4_Kx8) == 4 * SM_REPACK_ROWS + 2 * SM_REPACK_ROWS * QK_K / 32 + SM_REPACK_ROWS * QK_K / 2,
              "block_q4_Kx8 size");

/* Bytes of the repacked copy of an (n_rows, n_cols) Q4_K matrix, or -1 for a bad shape. */
int64_t sm_repack_q4_K_x8_size(int64_t n_rows, int64_t n_cols);
/* dst (sm_repack_q4_K_x8_size bytes) = W (n_rows rows of Q4_K, contiguous) in groups of 8
 * rows: group g's super-block i at block g * (n_cols / 256) + i.  SM_OK or SM_E_SHAPE. */
int sm_repack_q4_K_x8(void *dst, const void *W, int64_t n_rows, int64_t n_cols);
/* Y (n_tok, n_rows) = Xq (n_tok rows of Q8_K) @ W^T with W repacked by sm_repack_q4_K_x8;
 * one thread.  SM_E_ISA where the AVX2 kernel is not built in or the CPU lacks it. */
int sm_matmul_q4_K_x8(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok);
/* Rows [r0, r1) of that Y, r0 a multiple of SM_REPACK_ROWS (a row tile of matmul.c).  No
 * shape or CPU check: the caller uses it only where the current table's Q4_K dot kernels
 * are the avx2 unit's, so the CPU runs AVX2 and the build has this kernel. */
void sm_matmul_q4_K_x8_rows(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok,
                            int64_t r0, int64_t r1);

#endif
