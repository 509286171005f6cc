# Runs one compile-fail test (cmake -P run.cmake), as registered by CMakeLists.txt.
#
#   FTM_BINARY_DIR  the build tree holding the target
#   FTM_TARGET      the object library to build
#   FTM_SOURCE      its source, which carries the expected diagnostics
#   FTM_COMPILER    gcc or clang: which "// expected-error-<compiler>:" lines apply
#   FTM_EXPECT      fail: the build must fail and its output match every applicable
#                        regex; compile: the build must succeed (control case)
#   FTM_CONFIG      build configuration, for multi-config generators (may be empty)
#
# The regexes are CMake regexes (string(REGEX)): . * + ? [] [^] ^ $ | () are
# available, \d and {m,n} are not. Matching is case-insensitive (output and regex
# are both lower-cased) and ignores colour escapes. The regexes are read from the
# source at test time, so editing them needs no reconfigure.

foreach(var FTM_BINARY_DIR FTM_TARGET FTM_SOURCE FTM_COMPILER FTM_EXPECT)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: ${var} is not set")
  endif()
endforeach()
get_filename_component(name "${FTM_SOURCE}" NAME)

# --- Expectations ---------------------------------------------------------------

set(marker "//[ \t]*expected-error(-${FTM_COMPILER})?:")
file(STRINGS "${FTM_SOURCE}" lines REGEX "${marker}")
set(regexes "")
foreach(line IN LISTS lines)
  string(REGEX REPLACE "^.*${marker}[ \t]*" "" regex "${line}")
  string(STRIP "${regex}" regex)
  if(NOT regex STREQUAL "")
    list(APPEND regexes "${regex}")
  endif()
endforeach()
if(FTM_EXPECT STREQUAL "fail" AND NOT regexes)
  message(FATAL_ERROR
    "${name}: no '// expected-error-${FTM_COMPILER}:' or '// expected-error:' line; "
    "add the diagnostic this source must produce")
endif()

# --- Build ----------------------------------------------------------------------

# Plain ASCII diagnostics: no locale quotes, no colours.
set(ENV{LC_ALL} C)
set(ENV{LANG} C)
unset(ENV{GCC_COLORS})
unset(ENV{CLICOLOR_FORCE})

set(build "${CMAKE_COMMAND}" --build "${FTM_BINARY_DIR}" --target "${FTM_TARGET}")
if(FTM_CONFIG)
  list(APPEND build --config "${FTM_CONFIG}")
endif()
execute_process(COMMAND ${build}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

string(ASCII 27 esc)
string(REGEX REPLACE "${esc}\\[[0-9;]*[A-Za-z]" "" output "${output}")

# --- Verdict --------------------------------------------------------------------

if(FTM_EXPECT STREQUAL "compile")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR
      "${name} is a control case and must compile, but the build failed (${result}):\n"
      "${output}")
  endif()
  message(STATUS "${name}: compiled, as a control case must")
  return()
endif()

if(result EQUAL 0)
  message(FATAL_ERROR
    "${name} must not compile, but the build succeeded; the rule is not enforced.\n"
    "Build output:\n${output}")
endif()

string(TOLOWER "${output}" output_lc)
set(missing "")
foreach(regex IN LISTS regexes)
  string(TOLOWER "${regex}" regex_lc)
  if(output_lc MATCHES "${regex_lc}")
    string(SUBSTRING "${CMAKE_MATCH_0}" 0 200 matched)
    message(STATUS "${name}: matched '${regex}': ${matched}")
  else()
    list(APPEND missing "${regex}")
  endif()
endforeach()

if(missing)
  list(JOIN missing "\n  " missing_text)
  message(FATAL_ERROR
    "${name} failed to compile, but not with the expected diagnostic.\n"
    "Not found in the output (${FTM_COMPILER}):\n  ${missing_text}\n"
    "Build output:\n${output}")
endif()
message(STATUS "${name}: failed to compile with the expected diagnostic")
