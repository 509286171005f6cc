# The ABI-namespace check (cmake -P check_symbols.cmake): every name of ftm that the ODR
# test's program defines lies in ftm::checked_abi or ftm::unchecked_abi, both of them
# appear, and every header under include/ftm opens its namespaces through
# FTM_ABI_NAMESPACE (detail/config.hpp). Fails naming the symbols or headers that
# do not. Only <ftm/error.hpp> stays in ftm: its names are the same in both halves.
#
#   FTM_SOURCE_DIR   the ftm source tree
#   FTM_PROGRAM      the odr_test executable
#   FTM_NM           nm

cmake_policy(VERSION 3.23)
foreach(v FTM_SOURCE_DIR FTM_PROGRAM FTM_NM)
  if(NOT ${v})
    message(FATAL_ERROR "check_symbols.cmake: ${v} is not set")
  endif()
endforeach()
set(problems "")

# The headers: a namespace ftm opened any other way than through the macro.
file(GLOB_RECURSE headers RELATIVE "${FTM_SOURCE_DIR}/include"
     "${FTM_SOURCE_DIR}/include/ftm/*.hpp")
foreach(header IN LISTS headers)
  if(header STREQUAL "ftm/error.hpp")
    continue()
  endif()
  file(STRINGS "${FTM_SOURCE_DIR}/include/${header}" opens REGEX "^ *namespace ftm[ :{]")
  foreach(line IN LISTS opens)
    if(NOT line MATCHES "^ *namespace ftm::FTM_ABI_NAMESPACE[ :]")
      list(APPEND problems "${header}: '${line}' does not open ftm::FTM_ABI_NAMESPACE")
    endif()
  endforeach()
endforeach()

# The program's own names: its defined symbols, demangled.
execute_process(COMMAND "${FTM_NM}" -C --defined-only "${FTM_PROGRAM}"
                OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "check_symbols.cmake: ${FTM_NM} ${FTM_PROGRAM} failed (${rc})")
endif()
string(REPLACE ";" "," symbols "${symbols}")
string(REPLACE "\n" ";" symbols "${symbols}")
# What error.hpp declares in ftm itself.
set(shared "(errc|error|error_category|make_error_code|to_string|conflict|pool_full|usage_error|capacity_exceeded|type_mismatch|invalid_argument|retry_limit|bad_pool|io_error|port_full)([^A-Za-z0-9_]|$)")
set(checked FALSE)
set(unchecked FALSE)
set(outside 0)
foreach(symbol IN LISTS symbols)
  if(symbol MATCHES "ftm::checked_abi::")
    set(checked TRUE)
  endif()
  if(symbol MATCHES "ftm::unchecked_abi::")
    set(unchecked TRUE)
  endif()
  # Each mention of ftm:: in the symbol, with what follows it.
  string(REGEX MATCHALL "(^|[^A-Za-z0-9_])ftm::[A-Za-z0-9_:]*" mentions "${symbol}")
  foreach(m IN LISTS mentions)
    string(REGEX REPLACE "^[^f]*ftm::" "" rest "${m}")
    if(NOT rest MATCHES "^(checked_abi|unchecked_abi)::" AND NOT rest MATCHES "^${shared}")
      if(outside LESS 20)
        list(APPEND problems "a name outside the ABI namespace: ${symbol}")
      endif()
      math(EXPR outside "${outside} + 1")
      break()
    endif()
  endforeach()
endforeach()
if(NOT checked OR NOT unchecked)
  list(APPEND problems "the program should define names in both ftm::checked_abi and "
                       "ftm::unchecked_abi (checked: ${checked}, unchecked: ${unchecked})")
endif()

if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "ftm names outside the ABI namespace (${outside} symbols):\n  ${text}")
endif()
message(STATUS "every ftm name the program defines is in ftm::checked_abi or "
               "ftm::unchecked_abi, and every header opens its namespaces through it")
