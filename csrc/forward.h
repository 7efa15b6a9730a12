/* The transformer step: one call runs a whole batch of tokens through the model.
 *
 * A batch holds tokens of several sequences; each token names its KV-cache slot (one slot
 * per live sequence) and its position in that sequence.  Prompt chunks (many tokens of
 * one slot) and decode tokens (one per slot) mix freely: every linear layer is one
 * matrix x matrix over all tokens of the batch, so the weights stream from memory once per
 * step.  Weights are pointers into the mmapped GGUF file (never copied).
 *
 * Library C: no printing, no exit; errors are negative SM_E* codes (kernels.h). */
#ifndef SMALLMIND_FORWARD_H
#define SMALLMIND_FORWARD_H

#include <stdint.h>

#include "kernels.h"

enum sm_arch { SM_ARCH_LLAMA = 0, SM_ARCH_QWEN2 = 1, SM_ARCH_QWEN3 = 2, SM_ARCH_GEMMA3 = 3 };
enum sm_act { SM_ACT_SILU = 0, SM_ACT_GELU_TANH = 1 };

/* A weight as it lies in the file: n_rows rows of n_cols values of `type` (ggml ne1 x ne0).
 * data == NULL means "absent" (e.g. no bias, no q-norm). 1-D tensors have n_rows == 1. */
typedef struct {
    const void *data;
    int type;
    int64_t n_rows;
    int64_t n_cols;
} sm_tensor;

typedef struct {
    sm_tensor attn_norm;       /* (dim)                     */
    sm_tensor wq, wk, wv;      /* (n_heads*head_dim, dim), (n_kv_heads*head_dim, dim) x2 */
    sm_tensor bq, bk, bv;      /* qwen2 biases, or absent   */
    sm_tensor q_norm, k_norm;  /* per-head RMSNorm (head_dim): qwen3, gemma3; or absent */
    sm_tensor wo;              /* (dim, n_heads*head_dim)   */
    sm_tensor post_attn_norm;  /* gemma3, or absent         */
    sm_tensor ffn_norm;        /* (dim)                     */
    sm_tensor w_gate, w_up;    /* (hidden_dim, dim)         */
    sm_tensor w_down;          /* (dim, hidden_dim)         */
    sm_tensor post_ffn_norm;   /* gemma3, or absent         */
} sm_layer_weights;
/* The extension fills a layer as an array of sm_tensor in field order (the order
 * smallmind.engine.model.LAYER_TENSORS gives), so the struct holds nothing else. */
_Static_assert(sizeof(sm_layer_weights) % sizeof(sm_tensor) == 0,
               "sm_layer_weights holds sm_tensor fields only");

typedef struct {
    sm_tensor token_embd;      /* (vocab_size, dim)         */
    sm_tensor output_norm;     /* (dim)                     */
    sm_tensor output;          /* (vocab_size, dim); data == NULL: tied to token_embd */
    sm_tensor rope_freqs;      /* llama3 per-frequency divisors (head_dim/2, F32), or absent */
    sm_layer_weights *layers;  /* n_layers                  */
} sm_weights;

typedef struct {
    int arch, act;
    int dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size;
    float norm_eps;
    float rope_base;           /* theta of global layers                         */
    float rope_base_swa;       /* theta of sliding-window layers                 */
    float rope_freq_scale;     /* linear rope scaling: positions are multiplied  */
    int rope_neox;             /* 1: rotate (i, i + head_dim/2); 0: (2i, 2i + 1) */
    float attn_scale;          /* multiplies q.k, usually 1/sqrt(head_dim)       */
    float embed_scale;         /* multiplies embeddings (gemma: sqrt(dim)), else 1 */
    int sliding_window;        /* tokens a sliding-window layer sees (incl. itself); 0: none */
    const uint8_t *layer_swa;  /* n_layers flags: 1 = sliding-window layer; may be NULL */
    int n_ctx;                 /* positions per slot                              */
    int n_slots;               /* KV-cache slots (concurrent sequences)            */
    int max_batch_tokens;      /* most tokens one sm_forward call may carry        */
} sm_config;

typedef struct sm_model sm_model;

/* Allocates scratch buffers and the f16 KV cache (sliding-window layers keep only
 * sliding_window + max_batch_tokens positions per slot, as a ring).  Validates shapes and
 * types of all weights against the config: SM_E_SHAPE / SM_E_TYPE in *err on mismatch. */
sm_model *sm_model_create(const sm_config *cfg, const sm_weights *w, int *err);
void sm_model_free(sm_model *m);
/* Bytes held by the KV cache (for reporting). */
int64_t sm_model_kv_bytes(const sm_model *m);

/* Load-time repacking of Q4_K layer matrices (repack.h) for models created afterwards:
 * on (1), off (0), or SM_REPACK_MEASURED (-1, the default): on only on the CPU class it was
 * measured faster on (Intel with AMX; elsewhere unmeasured, so off).  A model repacks where
 * the current table takes Q4_K's dot kernels from the avx2 unit, keeping the original rows
 * as the fallback.  sm_get_repack: whether models created now repack (the setting resolved). */
#define SM_REPACK_MEASURED (-1)
void sm_set_repack(int on);
int sm_get_repack(void);
/* Matrices the model holds a repacked copy of. */
int sm_model_repacked(const sm_model *m);
/* Lets the OS drop the resident pages of the originals of the repacked matrices (their
 * whole pages; Linux; best effort), so the copies do not double their memory.  Only for
 * weights in a read-only file mapping, from which a later read (after a switch of kernel
 * table) pages them back in: on anonymous memory it would zero them. */
void sm_model_release_originals(sm_model *m);

/* Runs n_tokens tokens.  Token i is tokens[i] at position positions[i] of slot slots[i].
 * Within a slot, positions in one call must be increasing and contiguous, and every earlier
 * position of that slot must already be in the cache (from earlier calls).
 * Writes logits (n_out x vocab_size) for the tokens listed in out_rows (indices into the batch).
 * hidden, if not NULL, receives the final normalized hidden state (n_tokens x dim).
 * Runs entirely in C; safe to call without the GIL; not re-entrant for one model. */
int sm_forward(sm_model *m, int n_tokens, const int32_t *tokens, const int32_t *slots,
               const int32_t *positions, int n_out, const int32_t *out_rows, float *logits,
               float *hidden);

/* Copies the first n_positions cached positions of slot src into slot dst (prefix reuse). */
int sm_model_copy_slot(sm_model *m, int src, int dst, int n_positions);

#endif
