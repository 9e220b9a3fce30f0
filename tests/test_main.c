/* test_main.c - the CUnit runner.  Each test file registers its suites
 * through one function; the weak declarations let a suite file be absent
 * from a partial build. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUITES(X) \
    X(tests_safetensors) \
    X(tests_torchbin) \
    X(tests_checkpoint) \
    X(tests_tokenizer) \
    X(tests_tok_fuzz) \
    X(tests_image) \
    X(tests_kernels) \
    X(tests_swin) \
    X(tests_decoder) \
    X(tests_generate) \
    X(tests_cuda) \
    X(tests_anls) \
    X(tests_store) \
    X(tests_store_damage) \
    X(tests_job) \
    X(tests_corpus) \
    X(tests_synth) \
    X(tests_dispatch) \
    X(tests_result_check) \
    X(tests_cache) \
    X(tests_prune) \
    X(tests_flops) \
    X(tests_mask) \
    X(tests_train) \
    X(tests_swin_grad) \
    X(tests_distill) \
    X(tests_analyze) \
    X(tests_plan_baselines) \
    X(tests_kv) \
    X(tests_compare) \
    /* end */

#define DECLARE(fn) void fn(void) __attribute__((weak));
SUITES(DECLARE)

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
#define CALL(fn) if (fn) fn();
    SUITES(CALL)
    /* DM_TESTS=a,b runs only the suites whose names contain a or b. */
    const char *only = getenv("DM_TESTS");
    if (only && *only) {
        for (CU_pSuite su = CU_get_registry()->pSuite; su; su = su->pNext) {
            int keep = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", only);
            for (char *sv, *t = strtok_r(buf, ",", &sv); t; t = strtok_r(NULL, ",", &sv))
                keep |= strstr(su->pName, t) != NULL;
            CU_set_suite_active(su, keep);
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
