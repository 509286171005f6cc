// Harness self-test: this source fails to compile, but not with the diagnostic
// below, so run.cmake must report a failure (the test is registered WILL_FAIL).
// If this test ever "fails", the harness accepts any compile error.
//
// expected-error-gcc: the harness must not find this text
// expected-error-clang: the harness must not find this text

static_assert(sizeof(char) == 2, "a deliberate compile error for the harness self-test");
