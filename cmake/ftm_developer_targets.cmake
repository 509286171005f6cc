# Internal INTERFACE targets that carry the flags of our own targets (tests,
# examples, benchmarks). They are never linked to ftm::ftm, never installed, and
# never reach a consumer.
#
#   ftm_warnings   -Wall -Wextra -Wpedantic, plus -Werror when FTM_WERROR is ON
#   ftm_sanitize   -fsanitize=${FTM_SANITIZE} (empty when FTM_SANITIZE is "")
#   ftm_dev        both of the above, and FTM_FAULT_INJECTION=1 when that option is ON;
#                  link this one from examples/ and benchmarks/

add_library(ftm_warnings INTERFACE)
if(MSVC)
  target_compile_options(ftm_warnings INTERFACE /W4 $<$<BOOL:${FTM_WERROR}>:/WX>)
else()
  target_compile_options(ftm_warnings INTERFACE
    -Wall -Wextra -Wpedantic $<$<BOOL:${FTM_WERROR}>:-Werror>)
endif()

set(ftm_known_sanitizers "" "address" "undefined" "address,undefined" "thread")
if(NOT FTM_SANITIZE IN_LIST ftm_known_sanitizers)
  message(FATAL_ERROR
    "FTM_SANITIZE is '${FTM_SANITIZE}'; use one of: \"\", address, undefined, "
    "address,undefined, thread")
endif()

add_library(ftm_sanitize INTERFACE)
if(FTM_SANITIZE)
  # Abort on the first report, so a finding fails the test instead of scrolling by.
  target_compile_options(ftm_sanitize INTERFACE
    -fsanitize=${FTM_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(ftm_sanitize INTERFACE -fsanitize=${FTM_SANITIZE})
endif()

add_library(ftm_dev INTERFACE)
target_link_libraries(ftm_dev INTERFACE ftm_warnings ftm_sanitize Threads::Threads)
if(FTM_FAULT_INJECTION)
  target_compile_definitions(ftm_dev INTERFACE FTM_FAULT_INJECTION=1)
endif()
