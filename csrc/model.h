/* The model's state behind the opaque sm_model of forward.h: shared by model.c (creation,
 * validation, freeing) and forward.c (the step).  Internal to csrc/. */
#ifndef SM_MODEL_H
#define SM_MODEL_H

#include "forward.h"

/* ---------------------------------------------------------------------------------- */
/* Model state                                                                         */
/* ---------------------------------------------------------------------------------- */

/* The 1-D weights of one layer as f32 (copied at load; NULL when absent). */
typedef struct {
    float *attn_norm, *bq, *bk, *bv, *q_norm, *k_norm, *post_attn_norm, *ffn_norm,
        *post_ffn_norm;
} layer_vectors;

/* Repacked copies (repack.h) of one layer's Q4_K matrices, 64-byte aligned; NULL where
 * there is none (another type, or repacking off).  The originals stay the fallback. */
typedef struct {
    void *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
} layer_repacked;

/* One layer's KV cache. */
typedef struct {
    sm_half *k;  /* (n_slots, cap, n_kv_heads, head_dim) */
    sm_half *v;  /* (n_slots, cap, n_kv_heads, head_dim) */
    int cap;     /* cells per slot: n_ctx, or the ring size of a sliding-window layer */
    int swa;     /* 1: sliding-window layer */
} kv_layer;

struct sm_model {
    sm_config cfg;
    sm_weights w;
    sm_layer_weights *layers;  /* copy of w.layers */
    layer_vectors *vec;        /* n_layers */
    layer_repacked *repacked;  /* n_layers */
    int n_repacked;            /* matrices with a repacked copy */
    float *output_norm;        /* (dim) */
    float *rope_freqs;         /* (head_dim/2) or NULL */
    float *vec_arena;          /* owns all the f32 vectors above */
    uint8_t *layer_swa;        /* (n_layers) */

    kv_layer *kv;              /* (n_layers) */
    int swa_cap;               /* ring size of sliding-window layers (0: none) */
    int *slot_len;             /* (n_slots) positions cached per slot */
    int *ring_pos;             /* (n_slots, swa_cap) position held by each ring cell, or -1 */
    int *slot_last;            /* (n_slots) scratch: last position seen in this batch */

    /* scratch, B = max_batch_tokens */
    float *x;                  /* (B, dim) residual stream       */
    float *xb;                 /* (B, dim) normed input          */
    float *xb2;                /* (B, dim) branch output         */
    float *q;                  /* (B, n_heads * head_dim)        */
    float *k;                  /* (B, n_kv_heads * head_dim)     */
    float *v;                  /* (B, n_kv_heads * head_dim)     */
    float *att_out;            /* (B, n_heads * head_dim)        */
    float *hb;                 /* (B, hidden_dim) gate           */
    float *hb2;                /* (B, hidden_dim) up             */
    float *rope_cos, *rope_sin;         /* (B, head_dim/2) global layers         */
    float *rope_cos_swa, *rope_sin_swa; /* (B, head_dim/2) sliding-window layers */
    float *att;                /* (n_att_threads, att_stride) per thread: q rows, out rows, scores */
    int n_att_threads;
    int64_t att_stride;
    int att_qb;                /* tokens per attention block */
    int *att_items;            /* (B * n_heads, 4) attention work items of the current batch */
    float *gelu_table;         /* (65536) ggml's f16 GELU table (values widened to f32), or NULL */
    sm_workspace ws;           /* quantized activations for sm_matmul */
};

#endif
