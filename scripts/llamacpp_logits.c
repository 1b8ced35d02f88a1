// Prints llama.cpp's logits for token-id prompts: a tiny driver over libllama, built by
// scripts/make_gguf_reference.py against a llama.cpp build outside the repository.
//
// Usage: llamacpp_logits MODEL.gguf PROMPTS.txt OUT.bin NEW_TOKENS
// PROMPTS.txt: one prompt per line, token ids separated by spaces. For each prompt, in
// order, OUT.bin receives the f32 logits of every prompt position ([len, n_vocab], the
// whole prompt decoded in one batch), then NEW_TOKENS greedy token ids (int32), each
// decoded one at a time after the prompt. The KV cache is f32 and cleared between
// prompts; flash attention is off.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPTS.txt OUT.bin NEW_TOKENS\n", argv[0]);
        return 2;
    }
    int new_tokens = atoi(argv[4]);
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 256;
    cp.n_ubatch = 256;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.swa_full = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot make a context\n");
        return 1;
    }
    FILE *in = fopen(argv[2], "r");
    FILE *out = fopen(argv[3], "wb");
    if (!in || !out) {
        fprintf(stderr, "cannot open the prompt or output file\n");
        return 1;
    }
    static char line[1 << 16];
    struct llama_batch batch = llama_batch_init(256, 0, 1);
    while (fgets(line, sizeof line, in)) {
        int n = 0;
        for (char *tok = strtok(line, " \n"); tok; tok = strtok(NULL, " \n")) {
            batch.token[n] = atoi(tok);
            batch.pos[n] = n;
            batch.n_seq_id[n] = 1;
            batch.seq_id[n][0] = 0;
            batch.logits[n] = 1;
            n++;
        }
        if (n == 0) continue;
        batch.n_tokens = n;
        llama_memory_clear(llama_get_memory(ctx), true);
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed on a prompt of %d tokens\n", n);
            return 1;
        }
        for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), n_vocab, out);
        int next = argmax(llama_get_logits_ith(ctx, n - 1), n_vocab);
        for (int g = 0; g < new_tokens; g++) {
            int32_t id = next;
            fwrite(&id, sizeof id, 1, out);
            if (g + 1 == new_tokens) break;
            batch.token[0] = next;
            batch.pos[0] = n + g;
            batch.n_seq_id[0] = 1;
            batch.seq_id[0][0] = 0;
            batch.logits[0] = 1;
            batch.n_tokens = 1;
            if (llama_decode(ctx, batch) != 0) {
                fprintf(stderr, "llama_decode failed at generated token %d\n", g);
                return 1;
            }
            next = argmax(llama_get_logits_ith(ctx, 0), n_vocab);
        }
    }
    llama_batch_free(batch);
    fclose(out);
    fclose(in);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
