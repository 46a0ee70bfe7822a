/* Runs LeNet-5 compiled by `smelt compile --emit lib` from C.
 *
 *   smelt compile docs/examples/lenet5/model.onnx --emit lib -o build/liblenet5.a
 *   cc docs/examples/c/main.c -Ibuild build/liblenet5.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -o lenet5
 *   ./lenet5
 *
 * It feeds the input x[i] = (i % 17) / 8 - 1, runs the model twice (a session, then
 * caller-managed scratch memory) and prints the 10 logits of each run.
 */
#include "lenet5.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static size_t elements(const size_t *shape, size_t rank) {
    size_t n = 1;
    for (size_t i = 0; i < rank; i++) n *= shape[i];
    return n;
}

int main(void) {
    const smelt_model *model = smelt_lenet5_model();
    if (smelt_num_inputs(model) != 1 || smelt_num_outputs(model) != 1) {
        fprintf(stderr, "unexpected signature: %s\n", smelt_last_error());
        return 1;
    }
    size_t in_rank, out_rank;
    const size_t *in_shape = smelt_input_shape(model, 0, &in_rank);
    const size_t *out_shape = smelt_output_shape(model, 0, &out_rank);
    if (smelt_input_dtype(model, 0) != SMELT_F32 || smelt_output_dtype(model, 0) != SMELT_F32) {
        fprintf(stderr, "expected f32 tensors\n");
        return 1;
    }
    size_t n_in = elements(in_shape, in_rank), n_out = elements(out_shape, out_rank);
    printf("input %s: %zu values, output %s: %zu values\n", smelt_input_name(model, 0), n_in,
           smelt_output_name(model, 0), n_out);

    float *x = malloc(n_in * sizeof(float));
    float *y = malloc(n_out * sizeof(float));
    for (size_t i = 0; i < n_in; i++) x[i] = (float)(i % 17) / 8.0f - 1.0f;
    const void *inputs[1] = {x};
    void *outputs[1] = {y};

    smelt_session *session = NULL;
    if (smelt_create(model, 1, &session) != SMELT_OK ||
        smelt_run(session, inputs, outputs) != SMELT_OK) {
        fprintf(stderr, "run failed: %s\n", smelt_last_error());
        return 1;
    }
    printf("session:");
    for (size_t i = 0; i < n_out; i++) printf(" %.6f", y[i]);
    printf("\n");
    smelt_destroy(session);

    /* The same run in scratch memory this program owns. */
    void *scratch = NULL;
    size_t scratch_bytes = smelt_scratch_bytes(model);
    if (posix_memalign(&scratch, 64, scratch_bytes ? scratch_bytes : 64) != 0) return 1;
    if (smelt_run_with_scratch(model, inputs, outputs, scratch, 1) != SMELT_OK) {
        fprintf(stderr, "run failed: %s\n", smelt_last_error());
        return 1;
    }
    printf("scratch:");
    for (size_t i = 0; i < n_out; i++) printf(" %.6f", y[i]);
    printf("\n");

    /* Errors come back as codes with a message, never an abort. */
    if (smelt_run(NULL, inputs, outputs) == SMELT_OK) return 1;
    printf("error check: %s\n", smelt_last_error());

    free(scratch);
    free(x);
    free(y);
    return 0;
}
